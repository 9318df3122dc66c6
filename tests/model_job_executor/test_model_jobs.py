"""The model-job-executor against a real store and a fake deployer: leases, retries, teardown."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.model_job_executor import ModelJobExecutor, RetryPolicy
from api.store.sqlite import SqliteModelStore
from domain.deployment import DeployerError, DeploymentSpec, DeploymentState, Phase
from domain.records import ModelRecord, ModelStatus, Pvc, Slo
from tests.fakes import FakeDeployer

RETRY = RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_max_s=4.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteModelStore]:
    s = SqliteModelStore(tmp_path / "aif.db")
    yield s
    s.close()


def _record(name: str = "m", replicas: int = 2) -> ModelRecord:
    return ModelRecord(
        name=name, type="DeepSeek-R1-Distill-Qwen-7B", resource_type="huawei.com/ascend-1980",
        max_instance=4, min_instance=replicas, replicas=replicas,
        pvc=Pvc(name="release-models", path="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
        slo=Slo(target_time_to_first_token_p95=1000, target_time_per_output_token_p95=20),
    )  # fmt: skip


def _executor(
    store: SqliteModelStore, deployer: FakeDeployer, now: list[float], owner: str
) -> ModelJobExecutor:
    return ModelJobExecutor(
        store, deployer, interval_s=1, lease_ttl_s=30, retry=RETRY, owner=owner,
        clock=lambda: now[0],
    )  # fmt: skip


async def test_ready_deployment_becomes_active(store: SqliteModelStore) -> None:
    deployer = FakeDeployer()
    record = store.create(_record())
    await _executor(store, deployer, [0.0], "a").run_once()
    active = store.get(record.id)
    assert active is not None
    assert active.status is ModelStatus.ACTIVE
    assert active.observed_generation == active.generation
    assert [e.url for e in active.endpoints] == ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
    assert deployer.applied[0] == DeploymentSpec.from_record(record)


async def test_two_executors_never_act_on_one_model(store: SqliteModelStore) -> None:
    first, second = FakeDeployer(), FakeDeployer()
    record = store.create(_record())
    now = [0.0]
    await asyncio.gather(
        _executor(store, first, now, "host-a:1:x").run_once(),
        _executor(store, second, now, "host-b:2:y").run_once(),
    )
    assert len(first.applied) + len(second.applied) == 1
    held = store.get(record.id)
    assert held is not None
    owner = held.lease_owner
    assert owner in {"host-a:1:x", "host-b:2:y"}
    # The other executor keeps away until the lease expires, then takes over.
    other = second if owner == "host-a:1:x" else first
    other_name = "host-b:2:y" if owner == "host-a:1:x" else "host-a:1:x"
    await _executor(store, other, now, other_name).run_once()
    assert other.applied == []
    now[0] = 31.0
    await _executor(store, other, now, other_name).run_once()
    assert len(other.applied) == 1
    assert store.get(record.id).lease_owner == other_name  # type: ignore[union-attr]


async def test_lease_of_a_dead_process_on_this_host_is_taken_at_once(
    store: SqliteModelStore,
) -> None:
    import socket

    record = _record()
    record.lease_owner = f"{socket.gethostname()}:999999:dead"
    record.lease_expires_at = 1e12
    stored = store.create(record)
    deployer = FakeDeployer()
    await _executor(store, deployer, [0.0], "new").run_once()
    assert len(deployer.applied) == 1
    assert store.get(stored.id).status is ModelStatus.ACTIVE  # type: ignore[union-attr]


async def test_failures_back_off_then_fail_with_the_reason(store: SqliteModelStore) -> None:
    deployer = FakeDeployer(
        raise_error=DeployerError("PVC 'release-models' not found", reason="PvcNotFound")
    )
    record = store.create(_record())
    now = [0.0]
    executor = _executor(store, deployer, now, "a")
    await executor.run_once()
    first = store.get(record.id)
    assert first is not None
    assert first.status is ModelStatus.DEPLOYING
    assert first.next_attempt_at == 1.0
    assert "attempt 1 of 3" in first.status_msg
    await executor.run_once()  # still backing off: no new attempt
    assert len(deployer.applied) == 1
    now[0] = 1.0
    await executor.run_once()
    assert store.get(record.id).next_attempt_at == 3.0  # type: ignore[union-attr]
    now[0] = 3.0
    await executor.run_once()
    failed = store.get(record.id)
    assert failed is not None
    assert failed.status is ModelStatus.FAILED
    assert failed.status_code == "PvcNotFound"
    assert failed.status_msg == "PVC 'release-models' not found"
    now[0] = 100.0
    await executor.run_once()  # FAILED stays put until the user changes the model
    assert len(deployer.applied) == 3


async def test_non_retryable_error_fails_at_once(store: SqliteModelStore) -> None:
    deployer = FakeDeployer(
        raise_error=DeployerError("vllm is not installed", reason="EngineMissing", retryable=False)
    )
    record = store.create(_record())
    await _executor(store, deployer, [0.0], "a").run_once()
    assert store.get(record.id).status is ModelStatus.FAILED  # type: ignore[union-attr]


async def test_progress_message_is_recorded(store: SqliteModelStore) -> None:
    deployer = FakeDeployer(phase=Phase.PROGRESSING, message="1/2 instances ready")
    record = store.create(_record())
    await _executor(store, deployer, [0.0], "a").run_once()
    progressing = store.get(record.id)
    assert progressing is not None
    assert progressing.status is ModelStatus.DEPLOYING
    assert progressing.status_msg == "1/2 instances ready"


async def test_delete_tears_down_then_removes_the_record(store: SqliteModelStore) -> None:
    deployer = FakeDeployer()
    record = store.create(_record())
    executor = _executor(store, deployer, [0.0], "a")
    await executor.run_once()
    deleting = store.get(record.id)
    assert deleting is not None
    deleting.status = ModelStatus.DELETING
    store.replace(deleting)
    await executor.run_once()
    assert deployer.removed == [record.id]
    assert store.get(record.id) is None


class _SlowRemove(FakeDeployer):
    async def remove(self, model_id: str) -> bool:
        self.removed.append(model_id)
        return False  # something is still shutting down


async def test_delete_waits_until_everything_is_gone(store: SqliteModelStore) -> None:
    deployer = _SlowRemove()
    record = _record()
    record.status = ModelStatus.DELETING
    stored = store.create(record)
    await _executor(store, deployer, [0.0], "a").run_once()
    assert store.get(stored.id) is not None
    assert store.get(stored.id).status is ModelStatus.DELETING  # type: ignore[union-attr]


async def test_stop_hands_the_leases_back(store: SqliteModelStore) -> None:
    record = store.create(_record())
    executor = _executor(store, FakeDeployer(), [0.0], "a")
    await executor.run_once()
    assert store.get(record.id).lease_owner == "a"  # type: ignore[union-attr]
    await executor.stop()
    assert store.get(record.id).lease_owner == ""  # type: ignore[union-attr]


async def test_update_meanwhile_is_not_overwritten(store: SqliteModelStore) -> None:
    """A user's update that lands while the deployer works is never lost."""
    record = store.create(_record())

    class _UpdatingDeployer(FakeDeployer):
        async def apply(self, spec: DeploymentSpec) -> DeploymentState:
            current = store.get(spec.model_id)
            assert current is not None
            current.max_instance = 6
            store.replace(current)
            return await super().apply(spec)

    await _executor(store, _UpdatingDeployer(), [0.0], "a").run_once()
    after = store.get(record.id)
    assert after is not None
    assert after.max_instance == 6
    assert after.status is ModelStatus.ACTIVE


async def test_observed_changes_are_announced(store: SqliteModelStore) -> None:
    announced: list[str] = []
    record = store.create(_record())
    executor = ModelJobExecutor(
        store, FakeDeployer(), interval_s=1, lease_ttl_s=30, retry=RETRY, owner="a",
        clock=lambda: 0.0, on_observed=lambda: announced.append("changed"),
    )  # fmt: skip
    await executor.run_once()
    assert store.get(record.id).status is ModelStatus.ACTIVE  # type: ignore[union-attr]
    assert announced
    announced.clear()
    await executor.run_once()  # nothing changed: nothing to announce
    assert announced == []
