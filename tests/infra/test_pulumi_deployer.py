"""PulumiDeployer through a fake Pulumi CLI (:mod:`tests.infra.fake_pulumi`) and a fake cluster
(:mod:`tests.infra.fake_cluster`): its CLI calls, locks, progress and diagnoses.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.automation import CommandResult
from pulumi.automation.errors import create_command_error

from domain.deployment import DeployerError, DeploymentSpec, Phase
from domain.records import Pvc
from domain.settings import Settings
from infra.cluster_observer import (
    ClusterEvent,
    ContainerProblem,
    KubernetesObserver,
    LwsStatus,
    PodStatus,
)
from infra.manifests import LWS_NAME_LABEL, k8s_name
from infra.pulumi_deployer import PROJECT_NAME, PulumiDeployer, desired_stack, model_program
from infra.stacks import cli_message, lock_owners
from tests.infra.fake_api_server import serving
from tests.infra.fake_cluster import NAMESPACE, FakeCluster
from tests.infra.fake_pulumi import LWS_NAME, MODEL_ID, FakePulumi, dead_pid, lock_error


def make_spec(replicas: int = 2, **overrides: Any) -> DeploymentSpec:
    values: dict[str, Any] = {
        "model_id": MODEL_ID,
        "name": "DeepSeek-R1-Distill-Qwen-7B",
        "type": "DeepSeek-R1-Distill-Qwen-7B",
        "resource_type": "huawei.com/ascend-1980",
        "version": "1.0.0",
        "replicas": replicas,
        "pvc": Pvc(name="release-models", path="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
        "generation": 1,
    }
    values.update(overrides)
    return DeploymentSpec(**values)


SCALE_CALLS = ["stack select", "config set", "up", "stack output", "stack output", "stack history"]


def connect(cli: FakePulumi, cluster: FakeCluster) -> None:
    """`pulumi up` and `destroy` act on the fake cluster as the real ones on a real one."""

    def name(config: Mapping[str, str]) -> str:
        return k8s_name(config["modelName"], config["modelId"])

    cli.on_up = lambda c: cluster.apply(name(c), c["modelId"], int(c["replicas"]))
    cli.on_destroy = lambda c: cluster.delete(name(c))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", runtime="kubernetes", pulumi_workers=2)


@pytest.fixture
def cli() -> FakePulumi:
    return FakePulumi()


@pytest.fixture
def cluster(cli: FakePulumi) -> FakeCluster:
    cluster = FakeCluster()
    connect(cli, cluster)
    return cluster


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def deployer(settings: Settings, cli: FakePulumi, cluster: FakeCluster, clock: Clock) -> Any:
    deployer = PulumiDeployer(settings, pulumi_command=cli, observer=cluster, clock=clock)
    yield deployer
    await deployer.close()


async def test_first_apply_creates_the_stack_and_runs_up(
    deployer: PulumiDeployer, cli: FakePulumi, settings: Settings
) -> None:
    state = await deployer.apply(make_spec(replicas=2))

    assert state.phase is Phase.READY
    assert state.ready_replicas == 2
    verbs = cli.verbs()
    assert verbs.index("stack init") < verbs.index("config set-all") < verbs.index("up")
    stack = cli.stacks[MODEL_ID]
    assert stack.config["replicas"] == "2"
    assert stack.config["modelName"] == "DeepSeek-R1-Distill-Qwen-7B"
    assert stack.config["pvcName"] == "release-models"
    assert stack.config["namespace"] == NAMESPACE
    init = next(c for c in cli.calls if c[:2] == ["stack", "init"])
    assert init[init.index("--secrets-provider") + 1] == "passphrase"
    env = cli.envs[-1]
    assert env["PULUMI_CONFIG_PASSPHRASE"] == settings.pulumi_passphrase.get_secret_value()
    assert env["PULUMI_BACKEND_URL"].startswith("file://")
    assert env["PULUMI_BACKEND_URL"].endswith("/data/pulumi-state")
    assert (settings.data_dir / "pulumi" / MODEL_ID / "Pulumi.yaml").is_file()


async def test_one_endpoint_per_ready_group_leader(
    deployer: PulumiDeployer, cluster: FakeCluster
) -> None:
    state = await deployer.apply(make_spec())

    leaders = [cluster.pod_map[f"{LWS_NAME}-{i}"] for i in range(2)]
    assert [(e.instance_id, e.url) for e in state.endpoints] == [
        (pod.name, f"http://{pod.ip}:8000") for pod in leaders
    ]


async def test_unchanged_spec_runs_no_second_up(deployer: PulumiDeployer, cli: FakePulumi) -> None:
    await deployer.apply(make_spec())
    calls_after_first = len(cli.calls)

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.READY
    assert len(cli.calls) == calls_after_first  # not even a `stack select`


async def test_a_replica_change_is_a_scale_not_a_redeploy(
    deployer: PulumiDeployer, cli: FakePulumi, cluster: FakeCluster
) -> None:
    await deployer.apply(make_spec(replicas=2))
    before = len(cli.calls)

    state = await deployer.apply(make_spec(replicas=3))

    # One config key and one update (the SDK reads its outputs and summary after `up`).
    assert cli.verbs()[before:] == SCALE_CALLS
    assert "--refresh" not in next(c for c in cli.calls[before:] if c[0] == "up")
    assert cli.stacks[MODEL_ID].config["replicas"] == "3"
    assert cluster.lws[LWS_NAME].replicas == 3
    assert state.phase is Phase.READY
    assert len(state.endpoints) == 3


async def test_a_restarted_executor_reads_the_applied_digest_from_the_stack(
    settings: Settings, cli: FakePulumi, cluster: FakeCluster
) -> None:
    first = PulumiDeployer(settings, pulumi_command=cli, observer=cluster)
    await first.apply(make_spec())
    await first.close()

    second = PulumiDeployer(settings, pulumi_command=cli, observer=cluster)
    state = await second.apply(make_spec())
    scaled = await second.apply(make_spec(replicas=1))
    await second.close()

    assert state.phase is Phase.READY
    assert cli.verbs().count("up") == 2
    assert cli.verbs()[-5:] == SCALE_CALLS[1:]
    assert scaled.phase is Phase.READY


async def test_progress_comes_from_engine_events(
    settings: Settings, cli: FakePulumi, cluster: FakeCluster
) -> None:
    cluster.auto_ready = False
    deployer = PulumiDeployer(settings, pulumi_command=cli, observer=cluster)
    seen: list[str] = []
    original = cli.run

    def watching(args: list[str], *rest: Any, **kwargs: Any) -> CommandResult:
        result = original(args, *rest, **kwargs)
        if "up" in args:
            seen.append(deployer._operations[MODEL_ID].progress.message)
        return result

    cli.run = watching  # type: ignore[method-assign]
    state = await deployer.apply(make_spec())
    await deployer.close()

    assert seen == [f"pulumi up: created LeaderWorkerSet {LWS_NAME}-lws"]
    assert state.phase is Phase.PROGRESSING
    assert state.message == f"0 of 2 instances ready; pod {LWS_NAME}-0 is loading the model"


async def test_a_slow_update_reports_progress_and_finishes_on_a_later_pass(
    settings: Settings, cli: FakePulumi, cluster: FakeCluster
) -> None:
    deployer = PulumiDeployer(settings, pulumi_command=cli, observer=cluster, apply_wait_s=0.01)
    original = cli.run

    def slow(args: list[str], *rest: Any, **kwargs: Any) -> CommandResult:
        if "up" in args:
            time.sleep(0.3)
        return original(args, *rest, **kwargs)

    cli.run = slow  # type: ignore[method-assign]
    first = await deployer.apply(make_spec())
    assert first.phase is Phase.PROGRESSING
    assert first.message.startswith("pulumi up: ")

    deadline = time.monotonic() + 5
    state = first
    while state.phase is Phase.PROGRESSING and time.monotonic() < deadline:
        state = await deployer.apply(make_spec())
    await deployer.close()

    assert state.phase is Phase.READY
    assert cli.verbs().count("up") == 1


async def test_remove_destroys_and_is_done_only_when_the_pods_are_gone(
    deployer: PulumiDeployer,
    cli: FakePulumi,
    cluster: FakeCluster,
    clock: Clock,
    settings: Settings,
) -> None:
    await deployer.apply(make_spec())

    # skipAwait: the destroy returns while the pods still hold their cards.
    assert await deployer.remove(MODEL_ID) is False
    assert all(p.terminating for p in cluster.pod_map.values())
    cluster.terminated()
    assert await deployer.remove(MODEL_ID) is False  # not read again so soon
    clock.now += 5
    assert await deployer.remove(MODEL_ID) is True
    assert cli.verbs().count("destroy") == 1

    verbs = cli.verbs()
    assert verbs.index("destroy") < verbs.index("stack rm")
    assert MODEL_ID not in cli.stacks
    assert not (settings.data_dir / "pulumi" / MODEL_ID).exists()


async def test_remove_of_an_unknown_stack_is_already_done(
    deployer: PulumiDeployer, cli: FakePulumi
) -> None:
    assert await deployer.remove("0" * 32) is True
    assert "destroy" not in cli.verbs()


async def test_apply_after_remove_runs_up_again(deployer: PulumiDeployer, cli: FakePulumi) -> None:
    await deployer.apply(make_spec())
    await deployer.remove(MODEL_ID)
    await deployer.apply(make_spec())

    assert cli.verbs().count("up") == 2


async def test_a_held_lock_is_waited_for_not_failed(
    deployer: PulumiDeployer, cli: FakePulumi, clock: Clock
) -> None:
    # This very process holds it: alive.
    cli.fail("up", lock_error(socket.gethostname(), os.getpid(), datetime.now(UTC)))

    state = await deployer.apply(make_spec())
    again = await deployer.apply(make_spec())

    assert state.phase is again.phase is Phase.PROGRESSING
    assert f"locked by {socket.gethostname()} pid {os.getpid()}" in state.message
    assert "cancel" not in cli.verbs()
    assert cli.verbs().count("up") == 1  # not retried before LOCK_RETRY_S
    clock.now += 20
    assert (await deployer.apply(make_spec())).phase is Phase.READY
    assert cli.verbs().count("up") == 2


async def test_a_lock_of_a_live_executor_pod_is_left_alone(
    deployer: PulumiDeployer, cli: FakePulumi, cluster: FakeCluster
) -> None:
    an_hour_ago = datetime.fromtimestamp(time.time() - 3600, UTC)
    cluster.peers = {"aif-model-job-executor-7d9f"}
    cli.fail("up", lock_error("aif-model-job-executor-7d9f", 41, an_hour_ago))

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.PROGRESSING
    assert "locked by aif-model-job-executor-7d9f pid 41" in state.message
    assert "cancel" not in cli.verbs()


async def test_a_lock_of_an_executor_pod_that_is_gone_is_cancelled_at_once(
    deployer: PulumiDeployer, cli: FakePulumi, cluster: FakeCluster
) -> None:
    cluster.peers = {"aif-model-job-executor-new"}
    cli.fail("up", lock_error("aif-model-job-executor-old", 41, datetime.now(UTC)))

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.READY
    assert cli.verbs().count("cancel") == 1
    assert cli.verbs().count("up") == 2


async def test_a_lock_of_a_dead_process_is_cancelled_and_the_update_retried(
    deployer: PulumiDeployer, cli: FakePulumi
) -> None:
    cli.fail("up", lock_error(socket.gethostname(), dead_pid(), datetime.now(UTC)))

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.READY
    verbs = cli.verbs()
    assert verbs.count("up") == 2
    assert verbs.index("cancel") < len(verbs) - 1 - verbs[::-1].index("up")


async def test_without_the_cluster_a_stale_lock_from_another_host_is_cancelled_by_age(
    settings: Settings, cli: FakePulumi, cluster: FakeCluster
) -> None:
    deployer = PulumiDeployer(settings, pulumi_command=cli, observer=cluster, stale_lock_age_s=600)
    cluster.peers = None  # not in a cluster, or no grant: who holds it cannot be told
    an_hour_ago = datetime.fromtimestamp(time.time() - 3600, UTC)
    cli.fail("destroy", lock_error("aif-model-job-executor-old", 41, an_hour_ago))
    await deployer.apply(make_spec())

    assert await deployer.remove(MODEL_ID) is False
    cluster.terminated()
    deployer._destroyed[MODEL_ID] = 0.0
    assert await deployer.remove(MODEL_ID) is True
    await deployer.close()

    assert "cancel" in cli.verbs()
    assert MODEL_ID not in cli.stacks


async def test_a_failed_update_raises_the_clis_message(
    deployer: PulumiDeployer, cli: FakePulumi
) -> None:
    forbidden = (
        'leaderworkersets.leaderworkerset.x-k8s.io "x" is forbidden: User '
        '"system:serviceaccount:kube-system:aif" cannot create resource "leaderworkersets"'
    )
    cli.fail(
        "up",
        CommandResult(
            stdout=(
                "Updating (d970):\n\nDiagnostics:\n  kubernetes:leaderworkerset.x-k8s.io/v1:"
                f"LeaderWorkerSet (x-lws):\n    error: {forbidden}\n"
            ),
            stderr="error: update failed\n",
            code=255,
        ),
    )

    with pytest.raises(DeployerError) as caught:
        await deployer.apply(make_spec())

    assert caught.value.reason == "UpdateFailed"
    assert caught.value.message == forbidden
    # The failure is not remembered as applied: the next pass tries again.
    await deployer.apply(make_spec())
    assert cli.verbs().count("up") == 2


async def test_an_unknown_model_type_is_not_retryable(deployer: PulumiDeployer) -> None:
    with pytest.raises(DeployerError) as caught:
        await deployer.apply(make_spec(type="Llama-9000"))

    assert caught.value.reason == "UnknownModelType"
    assert caught.value.retryable is False


async def test_an_unreachable_cluster_is_a_retryable_error(
    deployer: PulumiDeployer, cluster: FakeCluster
) -> None:
    def refuse(namespace: str, name: str) -> LwsStatus | None:
        raise ConnectionRefusedError("connection refused")

    cluster.leader_worker_set = refuse  # type: ignore[method-assign]

    with pytest.raises(DeployerError) as caught:
        await deployer.apply(make_spec())

    assert caught.value.reason == "ClusterUnreachable"
    assert caught.value.retryable is True


async def test_recover_leaves_repairs_to_the_next_update(
    deployer: PulumiDeployer, cli: FakePulumi
) -> None:
    assert await deployer.recover() == 0
    assert cli.calls == []


async def test_close_closes_the_observer(
    settings: Settings, cli: FakePulumi, cluster: FakeCluster
) -> None:
    deployer = PulumiDeployer(settings, pulumi_command=cli, observer=cluster)
    await deployer.close()
    assert cluster.closed


def test_lock_owners_parse_the_diy_backends_message() -> None:
    at = datetime(2025, 4, 29, 17, 10, 8, tzinfo=UTC)
    [owner] = lock_owners(lock_error("host-a", 285, at).stderr)

    assert (owner.host, owner.pid, owner.created_at) == ("host-a", 285, at.timestamp())


def test_cli_message_falls_back_to_the_last_stderr_line() -> None:
    error = create_command_error(CommandResult("", "warning: x\nsomething broke\n", 1))
    assert cli_message(error) == "something broke"


@pytest.mark.usefixtures("pulumi_loop")
def test_the_program_builds_a_model_deployment_from_stack_config(settings: Settings) -> None:
    desired = desired_stack(make_spec(replicas=3), settings.cluster)
    created: list[pulumi.runtime.MockResourceArgs] = []

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            created.append(args)
            return f"{args.name}-id", {**args.inputs, "spec": args.inputs.get("spec", {})}

        def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
            return {}, []

    pulumi.runtime.set_mocks(Mocks(), project=PROJECT_NAME, stack=MODEL_ID, preview=False)
    pulumi.runtime.set_all_config({f"{PROJECT_NAME}:{k}": v for k, v in desired.config.items()})
    try:
        # The decorator waits for every registration the program started.
        pulumi.runtime.test(model_program)()
    finally:
        pulumi.runtime.set_all_config({})

    kinds = {a.typ: a for a in created}
    lws = kinds["kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet"]
    assert lws.inputs["spec"]["replicas"] == 3
    assert lws.inputs["metadata"]["name"] == LWS_NAME
    assert kinds["aif:index:ModelDeployment"].name == LWS_NAME


UNSCHEDULABLE = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."


def test_the_kubernetes_observer_reads_the_objects_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"/api/v1/namespaces/{NAMESPACE}"
    container = {"name": "vllm", "image": "vllm", "imageID": "", "ready": False}
    routes: dict[str, dict[str, Any]] = {
        f"/apis/leaderworkerset.x-k8s.io/v1/namespaces/{NAMESPACE}/leaderworkersets/{LWS_NAME}": {
            "spec": {"replicas": 2},
            "status": {"readyReplicas": 1},
        },
        f"{base}/pods": {
            "kind": "PodList",
            "items": [
                {
                    "metadata": {"name": "p-0"},
                    "status": {
                        "phase": "Running",
                        "conditions": [{"type": "Ready", "status": "False"}],
                        "containerStatuses": [
                            {
                                **container,
                                "restartCount": 4,
                                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                "lastState": {
                                    "terminated": {"reason": "OOMKilled", "exitCode": 137}
                                },
                            }
                        ],
                    },
                },
                {
                    "metadata": {"name": "p-1"},
                    "status": {
                        "phase": "Pending",
                        "conditions": [
                            {
                                "type": "PodScheduled",
                                "status": "False",
                                "reason": "Unschedulable",
                                "message": UNSCHEDULABLE,
                            }
                        ],
                    },
                },
            ],
        },
        f"{base}/events": {
            "kind": "EventList",
            "items": [
                {
                    "metadata": {"name": "e1"},
                    "involvedObject": {"kind": "Pod", "name": "p-1", "uid": "u-1"},
                    "reason": "FailedScheduling",
                    "message": "0/1 nodes are available",
                    "type": "Warning",
                },
            ],
        },
        f"{base}/persistentvolumeclaims/release-models": {"metadata": {"name": "release-models"}},
        f"{base}/pods/p-0": {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p-0"}},
    }
    with serving(routes, tmp_path, monkeypatch) as server:
        observer = KubernetesObserver()
        try:
            lws = observer.leader_worker_set(NAMESPACE, LWS_NAME)
            missing = observer.leader_worker_set(NAMESPACE, "gone")
            pods = observer.pods(NAMESPACE, {LWS_NAME_LABEL: LWS_NAME})
            events = observer.warning_events(NAMESPACE, ["u-1"])
            found = observer.pvc_exists(NAMESPACE, "release-models")
            absent = observer.pvc_exists(NAMESPACE, "nope")
            observer.delete_pods(NAMESPACE, ["p-0", "gone"])
        finally:
            observer.close()

    assert lws == LwsStatus(replicas=2, ready_replicas=1, updated_replicas=0)
    assert missing is None
    crashing, pending = pods
    assert crashing == PodStatus(
        "p-0",
        "Running",
        problems=(ContainerProblem("vllm", "CrashLoopBackOff", "", 4, "OOMKilled, exit code 137"),),
        last_termination="vllm: OOMKilled, exit code 137",
    )
    assert pending.unschedulable == UNSCHEDULABLE
    assert pending.scheduled is False
    assert events == [ClusterEvent("p-1", "FailedScheduling", "0/1 nodes are available", "u-1")]
    assert (found, absent) == (True, False)
    queries = [urllib.parse.parse_qs(urllib.parse.urlsplit(p).query) for p in server.paths]
    assert {"labelSelector": [f"{LWS_NAME_LABEL}={LWS_NAME}"]} in queries
    # The events of one pod, by uid: not every warning of the namespace.
    assert {"fieldSelector": ["type=Warning,involvedObject.uid=u-1"]} in queries
    # A pod already gone is no error.
    deletes = [p.split("?")[0] for p in server.paths if p.startswith("DELETE ")]
    assert deletes == [f"DELETE {base}/pods/p-0", f"DELETE {base}/pods/gone"]
