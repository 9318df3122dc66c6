"""The real executor, store and PulumiDeployer through the states a real cluster produces.

``ModelJobExecutor`` over a ``SqliteModelStore`` drives a ``PulumiDeployer`` whose CLI is
:class:`~tests.infra.fake_pulumi.FakePulumi` and whose cluster is
:class:`~tests.infra.fake_cluster.FakeCluster`; each case asserts what a user sees (status,
``status_code``, ``status_msg``, instances serving) and what it cost (CLI calls, API reads).
Time is a fake clock that each pass advances by the executor's own progress cadence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.model_job_executor import PROGRESS_POLL_S, ModelJobExecutor, RetryPolicy
from api.store.sqlite import SqliteModelStore
from domain.records import ModelRecord, ModelStatus, Pvc, Slo
from domain.settings import Settings
from domain.store import rewrite
from infra.diagnosis import CRASH_LOOP_RECREATIONS
from infra.manifests import k8s_name
from infra.pulumi_deployer import PulumiDeployer
from tests.infra.fake_cluster import FakeCluster
from tests.infra.fake_pulumi import FakePulumi, lock_error
from tests.infra.test_pulumi_deployer import Clock, connect

RETRY = RetryPolicy(max_attempts=5, backoff_base_s=1.0, backoff_max_s=8.0)
NO_NODE = "0/4 nodes are available: 4 Insufficient huawei.com/ascend-1980."


@dataclass
class Env:
    store: SqliteModelStore
    cli: FakePulumi
    cluster: FakeCluster
    clock: Clock
    executor: ModelJobExecutor
    record: ModelRecord

    @property
    def lws(self) -> str:
        return k8s_name(self.record.name, self.record.id)

    def pod(self, group: int) -> str:
        return f"{self.lws}-{group}"

    def edit(self, **changes: object) -> None:
        """A user's change, as the API writes it (a new generation)."""

        def change(record: ModelRecord) -> ModelRecord:
            for key, value in changes.items():
                setattr(record, key, value)
            record.generation += 1
            if record.status is ModelStatus.ACTIVE:
                record.status = ModelStatus.UPDATING
            return record

        rewrite(self.store, self.record.id, change)

    def now(self) -> ModelRecord:
        record = self.store.get(self.record.id)
        assert record is not None
        return record

    async def run(self, count: int = 1, step_s: float = PROGRESS_POLL_S) -> None:
        for _ in range(count):
            self.clock.now += step_s
            await self.executor.run_once()

    async def passes(self, count: int = 1, step_s: float = PROGRESS_POLL_S) -> ModelRecord:
        await self.run(count, step_s)
        return self.now()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = SqliteModelStore(tmp_path / "aif.db")
    cli, cluster, clock = FakePulumi(), FakeCluster(auto_ready=False), Clock()
    connect(cli, cluster)
    settings = Settings(data_dir=tmp_path / "data", runtime="kubernetes", pulumi_workers=2)
    deployer = PulumiDeployer(settings, pulumi_command=cli, observer=cluster, clock=clock)
    executor = ModelJobExecutor(
        store, deployer, interval_s=1, lease_ttl_s=30, retry=RETRY, owner="a", clock=clock
    )
    record = store.create(
        ModelRecord(
            name="DeepSeek-R1-Distill-Qwen-7B", type="DeepSeek-R1-Distill-Qwen-7B",
            resource_type="huawei.com/ascend-1980", max_instance=4, min_instance=2, replicas=2,
            pvc=Pvc(name="release-models", path="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
            slo=Slo(target_time_to_first_token_p95=1000, target_time_per_output_token_p95=20),
        )
    )  # fmt: skip
    yield Env(store, cli, cluster, clock, executor, record)
    await deployer.close()
    store.close()


async def test_a_model_becomes_active_with_one_instance_per_ready_leader(env: Env) -> None:
    loading = await env.passes()
    assert loading.status is ModelStatus.DEPLOYING
    assert loading.status_msg == f"0 of 2 instances ready; pod {env.pod(0)} is loading the model"

    env.cluster.ready(env.pod(0))
    env.cluster.set_pod(env.pod(1), ready=True, ip="10.0.1.8")
    active = await env.passes(60)

    assert active.status is ModelStatus.ACTIVE
    assert [(e.instance_id, e.url) for e in active.endpoints] == [
        (env.pod(0), "http://10.0.1.7:8000"),
        (env.pod(1), "http://10.0.1.8:8000"),
    ]
    assert env.cli.verbs().count("up") == 1


async def test_an_old_scheduling_event_does_not_fail_a_pod_that_now_pulls_its_image(
    env: Env,
) -> None:
    await env.passes()
    env.cluster.unschedulable(env.pod(1), NO_NODE)
    # LWS recreated the pod under its name; the scheduler placed it; it pulls a 20 GB image.
    env.cluster.recreate(env.pod(1), phase="Pending", scheduled=True, unschedulable="")
    record = await env.passes(400, step_s=1.0)

    assert record.status is ModelStatus.DEPLOYING
    assert record.status_code == ""
    assert record.attempts == 0
    assert f"pod {env.pod(0)} is loading the model" in record.status_msg


async def test_partial_capacity_stays_active_on_what_runs_and_says_what_waits(env: Env) -> None:
    await env.passes()
    env.cluster.ready(env.pod(0))
    env.cluster.unschedulable(env.pod(1), NO_NODE)
    record = await env.passes(step_s=3.0)

    assert record.status_code == "InsufficientAccelerators"
    assert record.status is ModelStatus.ACTIVE
    assert [e.instance_id for e in record.endpoints] == [env.pod(0)]  # still serving
    # Past every retry the model keeps serving on what runs, and keeps saying what waits.
    record = await env.passes(60, step_s=1.0)
    assert record.status is ModelStatus.ACTIVE
    assert record.status_msg.startswith(
        f"1/2 instances ready; 1 waiting: pod {env.pod(1)} cannot be scheduled, not enough free"
    )
    assert "free accelerators, add nodes, or lower the model's instances" in record.status_msg
    assert record.ready_instances == 1
    assert [e.instance_id for e in record.endpoints] == [env.pod(0)]


async def test_a_crash_loop_shows_from_group_recreations_and_points_at_the_logs(
    env: Env,
) -> None:
    await env.passes()
    for _ in range(CRASH_LOOP_RECREATIONS):
        env.cluster.set_pod(env.pod(0), last_termination="vllm: Error, exit code 1")
        await env.passes(step_s=3.0)  # an observation sees the container that exited
        env.cluster.crash(env.pod(0))  # LWS recreates the group: restartCount stays 0
        record = await env.passes(step_s=3.0)
    assert env.cluster.pod_map[env.pod(0)].problems == ()

    assert record.status_code == "EngineCrashed"
    assert f"the group of pod {env.pod(0)} was recreated 3 times" in record.status_msg
    assert "last exit: vllm: Error, exit code 1" in record.status_msg
    assert f"kubectl logs -n aif-models {env.pod(0)} -c vllm -f" in record.status_msg
    # Each report needs new evidence: the executor backs off, then fails for good.
    for _ in range(RETRY.max_attempts):
        for _ in range(CRASH_LOOP_RECREATIONS):
            env.cluster.crash(env.pod(0))
            record = await env.passes(step_s=10.0)
    assert record.status is ModelStatus.FAILED
    assert record.status_code == "EngineCrashed"


async def test_a_rollout_is_not_active_until_every_group_runs_the_new_template(
    env: Env,
) -> None:
    await env.passes()
    env.cluster.ready(env.pod(0))
    env.cluster.set_pod(env.pod(1), ready=True, ip="10.0.1.8")
    assert (await env.passes(60)).status is ModelStatus.ACTIVE
    env.edit(version="1.0.1")

    env.cluster.roll_out(env.lws, updated=1)  # one group replaced, one still old and ready
    record = await env.passes(40, step_s=0.5)
    assert record.status is not ModelStatus.ACTIVE or record.observed_generation < (
        record.generation
    )
    assert "1 of 2 on the current template (rolling update)" in record.status_msg
    assert record.ready_instances == 2

    env.cluster.lws[env.lws].updated = None
    record = await env.passes(40, step_s=0.5)
    assert record.status is ModelStatus.ACTIVE
    assert record.observed_generation == record.generation


async def test_a_lock_left_by_a_dead_executor_pod_is_cancelled_at_once(env: Env) -> None:
    env.cluster.peers = {"aif-model-job-executor-5c7d"}  # the new pod; the old one is gone
    env.cli.fail("up", lock_error("aif-model-job-executor-9f2b", 7, datetime.now(UTC)))
    await env.passes()
    env.cluster.ready(env.pod(0))
    env.cluster.set_pod(env.pod(1), ready=True, ip="10.0.1.8")
    record = await env.passes(60)

    assert record.status is ModelStatus.ACTIVE
    assert record.attempts == 0
    assert env.cli.verbs().count("cancel") == 1
    assert env.cli.verbs().count("up") == 2


async def test_replicas_changed_by_another_field_manager_are_taken_back(env: Env) -> None:
    env.cluster.auto_ready = True
    assert (await env.passes(60)).status is ModelStatus.ACTIVE
    env.cluster.scale_by_hand(env.lws, 5)  # kubectl scale

    record = await env.passes(300)  # 15 s: within one ready-state observation interval

    assert env.cluster.lws[env.lws].replicas == 2
    assert record.status is ModelStatus.ACTIVE
    assert len(record.endpoints) == 2
    ups = [c for c in env.cli.calls if c[0] == "up"]
    assert len(ups) == 2 and "--refresh" in ups[1]


async def test_a_scale_applies_the_replicas_alone(env: Env) -> None:
    env.cluster.auto_ready = True
    assert (await env.passes(60)).status is ModelStatus.ACTIVE
    before = len(env.cli.calls)
    env.edit(replicas=3)

    record = await env.passes(60)

    assert record.status is ModelStatus.ACTIVE
    assert len(record.endpoints) == 3
    verbs = env.cli.verbs()[before:]
    assert verbs.count("up") == 1 and "config set-all" not in verbs
    assert verbs[:2] == ["stack select", "config set"]


async def test_a_deleted_model_is_forgotten_only_when_its_pods_are_gone(env: Env) -> None:
    env.cluster.auto_ready = True
    await env.passes(60)
    rewrite(
        env.store, env.record.id, lambda r: r.model_copy(update={"status": ModelStatus.DELETING})
    )

    await env.run(60)
    assert env.store.get(env.record.id) is not None  # pods still hold their cards
    assert env.cluster.pod_map and all(p.terminating for p in env.cluster.pod_map.values())
    env.cluster.terminated()
    await env.run(80)

    assert env.store.get(env.record.id) is None
    assert env.cli.verbs().count("destroy") == 1


# Reads of the cluster per loading model per minute: at most this many in the first minute,
# and this many on average over a half-hour load.
FIRST_MINUTE_READS = 80
HALF_HOUR_AVERAGE_READS = 12


async def test_api_reads_per_loading_model_per_minute_are_bounded(env: Env) -> None:
    await env.passes()
    env.cluster.reads.clear()
    await env.passes(int(60 / PROGRESS_POLL_S))  # one minute of the executor's 50 ms cadence
    first_minute = sum(env.cluster.reads.values())

    # The rest of a half-hour load, a pass each second: reads are due at most every 2 s, so
    # the 50 ms cadence would read no more often.
    for _ in range(29):
        await env.passes(60, step_s=1.0)
    average = sum(env.cluster.reads.values()) / 30

    assert env.now().status is ModelStatus.DEPLOYING
    assert first_minute <= FIRST_MINUTE_READS, env.cluster.reads
    assert average <= HALF_HOUR_AVERAGE_READS, env.cluster.reads
    print(f"reads: first minute {first_minute}, half-hour average {average:.1f}/min")
