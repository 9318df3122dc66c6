"""PulumiDeployer through a fake Pulumi CLI and a fake cluster.

``FakePulumi`` subclasses the Automation API's ``PulumiCommand`` and answers the CLI calls the
real ``LocalWorkspace``/``Stack`` issue (``stack select/init``, ``config set-all``, ``up``,
``stack output``, ``stack history``, ``destroy``, ``stack rm``, ``cancel``), keeping stacks in
memory and streaming engine events to the Automation API's gRPC event server as the real CLI
does. ``FakeObserver`` stands in for the cluster.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pulumi
import pytest
import yaml
from pulumi import automation as auto
from pulumi.automation import CommandResult
from pulumi.automation.errors import create_command_error
from pulumi.runtime.proto import events_pb2, events_pb2_grpc
from semver import VersionInfo

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
from infra.manifests import LWS_NAME_LABEL, k8s_name, service_name
from infra.pulumi_deployer import PROJECT_NAME, PulumiDeployer, desired_stack, model_program
from infra.stacks import cli_message, lock_owners

NAMESPACE = "aif-models"
MODEL_ID = "d97051120764490daf846053e16d4f25"
TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


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


LWS_NAME = k8s_name("DeepSeek-R1-Distill-Qwen-7B", MODEL_ID)


def lock_error(host: str, pid: int, at: datetime) -> CommandResult:
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return CommandResult(
        stdout="",
        stderr=(
            "error: the stack is currently locked by 1 lock(s). Either wait for the other "
            "process(es) to end or delete the lock file with `pulumi cancel`.\n"
            f"  file:///var/lib/aif/pulumi-state/.pulumi/locks/organization/{PROJECT_NAME}/"
            f"{MODEL_ID}/1b2c.json: created by aif@{host} (pid {pid}) at {stamp}"
        ),
        code=255,
    )


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@dataclass
class FakeStack:
    config: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    updates: int = 0


class FakePulumi(auto.PulumiCommand):
    """The Pulumi CLI, as far as the Automation API can tell."""

    def __init__(self, version: str = "3.272.0") -> None:
        # Not super().__init__(): that runs `pulumi version`, which is not installed here.
        self.command = "pulumi"
        self.version = VersionInfo.parse(version)
        self.stacks: dict[str, FakeStack] = {}
        self.calls: list[list[str]] = []
        self.envs: list[Mapping[str, str]] = []
        self.failures: dict[str, list[CommandResult]] = {}

    def fail(self, verb: str, *results: CommandResult) -> None:
        """The next calls of ``verb`` (``up``, ``destroy`` ...) fail with ``results``."""
        self.failures.setdefault(verb, []).extend(results)

    def verbs(self) -> list[str]:
        return [" ".join(a[:2]) if a[0] in ("stack", "config") else a[0] for a in self.calls]

    def run(
        self,
        args: list[str],
        cwd: str,
        additional_env: Mapping[str, str],
        on_output: Callable[[str], Any] | None = None,
        on_error: Callable[[str], Any] | None = None,
    ) -> CommandResult:
        args = [a for a in args if a != "--non-interactive"]
        self.calls.append(args)
        self.envs.append(dict(additional_env))
        verb = " ".join(args[:2]) if args[0] in ("stack", "config") else args[0]
        queued = self.failures.get(verb)
        if queued:
            raise create_command_error(queued.pop(0))
        result = self._answer(verb, args, on_output)
        if result.code != 0:
            raise create_command_error(result)
        return result

    def _answer(
        self, verb: str, args: list[str], on_output: Callable[[str], Any] | None
    ) -> CommandResult:
        name = _flag(args, "--stack") or args[-1]
        stack = self.stacks.get(name)
        if verb == "stack init":
            self.stacks[args[2]] = FakeStack()
            return _ok()
        if stack is None:
            return CommandResult("", f"error: no stack named '{name}' found", 255)
        if verb == "stack select":
            return _ok()
        if verb == "config set-all":
            pairs = [a for a in args if "=" in a and not a.startswith("--")]
            stack.config.update(pair.split("=", 1) for pair in pairs)
            return _ok()
        if verb == "up":
            self._stream(_flag(args, "--event-log"), _up_events(stack.config))
            if on_output is not None:
                on_output("Updating (fake):")
            stack.updates += 1
            lws = k8s_name(stack.config["modelName"], stack.config["modelId"])
            stack.outputs = {
                "lwsName": lws,
                "serviceName": service_name(lws),
                "clusterIp": "10.96.0.20",
                "port": 8000,
                "specHash": stack.config["specHash"],
            }
            return _ok("Update succeeded")
        if verb == "stack output":
            return _ok(json.dumps(stack.outputs))
        if verb == "stack history":
            return _ok(json.dumps([_summary(stack)] if stack.updates else []))
        if verb == "destroy":
            stack.outputs = {}
            return _ok("Destroy succeeded")
        if verb == "stack rm":
            del self.stacks[name]
            return _ok()
        if verb == "cancel":
            return _ok("The currently running update has been canceled!")
        raise AssertionError(f"unexpected pulumi call {args}")

    @staticmethod
    def _stream(target: str | None, events: list[dict[str, Any]]) -> None:
        # Newer CLIs send engine events over gRPC to the Automation API's server.
        if target is None:
            return
        assert target.startswith("tcp://"), target
        requests = [events_pb2.EventRequest(event=json.dumps(e)) for e in events]
        with grpc.insecure_channel(target.removeprefix("tcp://")) as channel:
            events_pb2_grpc.EventsStub(channel).StreamEvents(iter(requests))


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _ok(stdout: str = "") -> CommandResult:
    return CommandResult(stdout=stdout, stderr="", code=0)


def _summary(stack: FakeStack) -> dict[str, Any]:
    now = datetime.now(UTC).strftime(TIMESTAMP)
    return {
        "kind": "update",
        "startTime": now,
        "endTime": now,
        "message": "",
        "environment": {},
        "config": {},
        "result": "succeeded",
        "version": stack.updates,
    }


def _up_events(config: Mapping[str, str]) -> list[dict[str, Any]]:
    lws_type = "kubernetes:leaderworkerset.x-k8s.io/v1:LeaderWorkerSet"
    lws_urn = f"urn:pulumi:{MODEL_ID}::{PROJECT_NAME}::{lws_type}::{LWS_NAME}-lws"
    meta = {"op": "create", "urn": lws_urn, "type": lws_type, "provider": ""}
    return [
        {"sequence": 1, "timestamp": 0, "resourcePreEvent": {"metadata": meta}},
        {"sequence": 2, "timestamp": 0, "resOutputsEvent": {"metadata": meta}},
        {"sequence": 3, "timestamp": 0, "cancelEvent": {}},
    ]


@dataclass
class FakeObserver:
    lws: dict[str, LwsStatus] = field(default_factory=dict)
    pod_list: list[PodStatus] = field(default_factory=list)
    events: list[ClusterEvent] = field(default_factory=list)
    pvcs: set[str] = field(default_factory=lambda: {"release-models"})
    closed: bool = False

    def leader_worker_set(self, namespace: str, name: str) -> LwsStatus | None:
        assert namespace == NAMESPACE
        return self.lws.get(name)

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[PodStatus]:
        assert dict(labels) == {LWS_NAME_LABEL: LWS_NAME}
        return list(self.pod_list)

    def warning_events(self, namespace: str, object_names: Collection[str]) -> list[ClusterEvent]:
        return [e for e in self.events if e.object_name in object_names]

    def pvc_exists(self, namespace: str, name: str) -> bool:
        return name in self.pvcs

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", runtime="kubernetes", pulumi_workers=2)


@pytest.fixture
def cli() -> FakePulumi:
    return FakePulumi()


@pytest.fixture
def cluster() -> FakeObserver:
    return FakeObserver(lws={LWS_NAME: LwsStatus(replicas=2, ready_replicas=2)})


@pytest.fixture
async def deployer(settings: Settings, cli: FakePulumi, cluster: FakeObserver) -> Any:
    deployer = PulumiDeployer(settings, pulumi_command=cli, observer=cluster)
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


async def test_endpoint_is_the_leader_service(deployer: PulumiDeployer) -> None:
    state = await deployer.apply(make_spec())

    [endpoint] = state.endpoints
    assert endpoint.url == f"http://{service_name(LWS_NAME)}.{NAMESPACE}.svc.cluster.local:8000"


async def test_unchanged_spec_runs_no_second_up(deployer: PulumiDeployer, cli: FakePulumi) -> None:
    await deployer.apply(make_spec())
    calls_after_first = len(cli.calls)

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.READY
    assert len(cli.calls) == calls_after_first  # not even a `stack select`


async def test_changed_replicas_run_up_again(deployer: PulumiDeployer, cli: FakePulumi) -> None:
    await deployer.apply(make_spec(replicas=2))
    await deployer.apply(make_spec(replicas=3))

    assert cli.verbs().count("up") == 2
    assert cli.stacks[MODEL_ID].config["replicas"] == "3"


async def test_a_restarted_executor_reads_the_applied_digest_from_the_stack(
    settings: Settings, cli: FakePulumi, cluster: FakeObserver
) -> None:
    first = PulumiDeployer(settings, pulumi_command=cli, observer=cluster)
    await first.apply(make_spec())
    await first.close()

    second = PulumiDeployer(settings, pulumi_command=cli, observer=cluster)
    state = await second.apply(make_spec())
    await second.close()

    assert state.phase is Phase.READY
    assert cli.verbs().count("up") == 1
    assert cli.verbs()[-1] == "stack output"


async def test_progress_comes_from_engine_events(
    settings: Settings, cli: FakePulumi, cluster: FakeObserver
) -> None:
    cluster.lws.clear()
    cluster.lws[LWS_NAME] = LwsStatus(replicas=2, ready_replicas=0)
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
    assert state.message == "0 of 2 instances ready"


async def test_a_slow_update_reports_progress_and_finishes_on_a_later_pass(
    settings: Settings, cli: FakePulumi, cluster: FakeObserver
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


async def test_remove_destroys_and_removes_the_stack(
    deployer: PulumiDeployer, cli: FakePulumi, settings: Settings
) -> None:
    await deployer.apply(make_spec())

    assert await deployer.remove(MODEL_ID) is True

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


async def test_a_held_lock_is_stack_locked_and_retryable(
    deployer: PulumiDeployer, cli: FakePulumi
) -> None:
    # This very process holds it: alive.
    cli.fail("up", lock_error(socket.gethostname(), os.getpid(), datetime.now(UTC)))

    with pytest.raises(DeployerError) as caught:
        await deployer.apply(make_spec())

    assert caught.value.reason == "StackLocked"
    assert caught.value.retryable is True
    assert "cancel" not in cli.verbs()


async def test_a_fresh_lock_from_another_host_is_left_alone(
    deployer: PulumiDeployer, cli: FakePulumi
) -> None:
    cli.fail("up", lock_error("aif-model-job-executor-7d9f", 41, datetime.now(UTC)))

    with pytest.raises(DeployerError) as caught:
        await deployer.apply(make_spec())

    assert caught.value.reason == "StackLocked"
    assert "cancel" not in cli.verbs()


async def test_a_lock_of_a_dead_process_is_cancelled_and_the_update_retried(
    deployer: PulumiDeployer, cli: FakePulumi
) -> None:
    cli.fail("up", lock_error(socket.gethostname(), dead_pid(), datetime.now(UTC)))

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.READY
    verbs = cli.verbs()
    assert verbs.count("up") == 2
    assert verbs.index("cancel") < len(verbs) - 1 - verbs[::-1].index("up")


async def test_a_stale_lock_from_another_host_is_cancelled(
    settings: Settings, cli: FakePulumi, cluster: FakeObserver
) -> None:
    deployer = PulumiDeployer(settings, pulumi_command=cli, observer=cluster, stale_lock_age_s=600)
    an_hour_ago = datetime.fromtimestamp(time.time() - 3600, UTC)
    cli.fail("destroy", lock_error("aif-model-job-executor-old", 41, an_hour_ago))
    await deployer.apply(make_spec())

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


async def test_a_missing_pvc_fails_with_what_to_do(
    deployer: PulumiDeployer, cluster: FakeObserver
) -> None:
    cluster.pvcs.clear()
    cluster.lws[LWS_NAME] = LwsStatus(replicas=2, ready_replicas=0)
    cluster.pod_list = [
        PodStatus(
            f"{LWS_NAME}-0",
            "Pending",
            unschedulable='0/3 nodes are available: persistentvolumeclaim "release-models" '
            "not found. preemption: 0/3 nodes are available.",
        )
    ]

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.FAILED
    assert state.reason == "PvcNotFound"
    assert state.message == (
        "PVC 'release-models' not found in namespace 'aif-models': create it and put the "
        "weights at deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    )


async def test_insufficient_accelerators_from_scheduling_events(
    deployer: PulumiDeployer, cluster: FakeObserver
) -> None:
    cluster.lws[LWS_NAME] = LwsStatus(replicas=2, ready_replicas=1)
    cluster.pod_list = [
        PodStatus(f"{LWS_NAME}-0", "Running", ready=True),
        PodStatus(f"{LWS_NAME}-1", "Pending"),
    ]
    cluster.events = [
        ClusterEvent(
            f"{LWS_NAME}-1",
            "FailedScheduling",
            "0/4 nodes are available: 4 Insufficient huawei.com/ascend-1980.",
        )
    ]

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.FAILED
    assert state.reason == "InsufficientAccelerators"
    assert "4 Insufficient huawei.com/ascend-1980" in state.message
    assert f"pod {LWS_NAME}-1" in state.message
    # The ready instance keeps serving meanwhile.
    assert state.ready_replicas == 1
    assert len(state.endpoints) == 1


async def test_an_image_pull_error_names_the_pod_and_the_fix(
    deployer: PulumiDeployer, cluster: FakeObserver
) -> None:
    cluster.lws[LWS_NAME] = LwsStatus(replicas=2, ready_replicas=0)
    pull = 'Back-off pulling image "quay.io/ascend/vllm-ascend:v0.9.1"'
    cluster.pod_list = [
        PodStatus(
            f"{LWS_NAME}-0",
            "Pending",
            problems=(ContainerProblem("ascend-vllm-arm64", "ImagePullBackOff", pull),),
        )
    ]

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.FAILED
    assert state.reason == "ImagePullError"
    assert pull in state.message
    assert "ascend-vllm-arm64" in state.message


async def test_a_crashing_engine_points_at_its_logs(
    deployer: PulumiDeployer, cluster: FakeObserver
) -> None:
    cluster.lws[LWS_NAME] = LwsStatus(replicas=2, ready_replicas=0)
    crash = ContainerProblem(
        "ascend-vllm-arm64", "CrashLoopBackOff", "back-off 5m0s", 7, "OOMKilled, exit code 137"
    )
    cluster.pod_list = [PodStatus(f"{LWS_NAME}-0", "Running", problems=(crash,))]

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.FAILED
    assert state.reason == "EngineCrashed"
    assert "OOMKilled, exit code 137" in state.message
    assert f"kubectl logs -n {NAMESPACE} {LWS_NAME}-0 -c ascend-vllm-arm64 --previous" in (
        state.message
    )


async def test_loading_instances_are_progressing(
    deployer: PulumiDeployer, cluster: FakeObserver
) -> None:
    cluster.lws[LWS_NAME] = LwsStatus(replicas=2, ready_replicas=1)
    cluster.pod_list = [
        PodStatus(f"{LWS_NAME}-0", "Running", ready=True),
        PodStatus(f"{LWS_NAME}-1", "Running"),
    ]

    state = await deployer.apply(make_spec())

    assert state.phase is Phase.PROGRESSING
    assert state.message == f"1 of 2 instances ready; pod {LWS_NAME}-1 is loading the model"
    assert state.ready_replicas == 1


async def test_a_lws_deleted_by_hand_is_reapplied_with_a_refresh(
    deployer: PulumiDeployer, cli: FakePulumi, cluster: FakeObserver
) -> None:
    await deployer.apply(make_spec())
    cluster.lws.clear()

    gone = await deployer.apply(make_spec())
    assert gone.phase is Phase.PROGRESSING
    cluster.lws[LWS_NAME] = LwsStatus(replicas=2, ready_replicas=2)
    back = await deployer.apply(make_spec())

    assert back.phase is Phase.READY
    ups = [c for c in cli.calls if c[0] == "up"]
    assert len(ups) == 2
    assert "--refresh" in ups[1]


async def test_an_unreachable_cluster_is_a_retryable_error(
    deployer: PulumiDeployer, cluster: FakeObserver
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
    settings: Settings, cli: FakePulumi, cluster: FakeObserver
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


class FakeApiServer(http.server.ThreadingHTTPServer):
    """Just enough of the Kubernetes API for KubernetesObserver, on a loopback port."""

    def __init__(self, routes: dict[str, dict[str, Any]]) -> None:
        self.routes = routes
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), _ApiHandler)


class _ApiHandler(http.server.BaseHTTPRequestHandler):
    server: FakeApiServer

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.server.paths.append(self.path)
        body = self.server.routes.get(path)
        if body is None:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
        payload = json.dumps(body).encode()
        self.send_response(int(body.get("code", 200)) if body.get("kind") == "Status" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


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
                    "involvedObject": {"kind": "Pod", "name": "p-1"},
                    "reason": "FailedScheduling",
                    "message": "0/1 nodes are available",
                    "type": "Warning",
                },
                {
                    "metadata": {"name": "e2"},
                    "involvedObject": {"kind": "Pod", "name": "someone-else"},
                    "reason": "BackOff",
                    "type": "Warning",
                },
            ],
        },
        f"{base}/persistentvolumeclaims/release-models": {"metadata": {"name": "release-models"}},
    }
    server = FakeApiServer(routes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "t", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "t", "user": {"token": "t"}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
                "current-context": "t",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    observer = KubernetesObserver()
    try:
        lws = observer.leader_worker_set(NAMESPACE, LWS_NAME)
        missing = observer.leader_worker_set(NAMESPACE, "gone")
        pods = observer.pods(NAMESPACE, {LWS_NAME_LABEL: LWS_NAME})
        events = observer.warning_events(NAMESPACE, ["p-1"])
        found = observer.pvc_exists(NAMESPACE, "release-models")
        absent = observer.pvc_exists(NAMESPACE, "nope")
    finally:
        observer.close()
        server.shutdown()
        server.server_close()
        thread.join()

    assert lws == LwsStatus(replicas=2, ready_replicas=1)
    assert missing is None
    crashing, pending = pods
    assert crashing == PodStatus(
        "p-0",
        "Running",
        problems=(ContainerProblem("vllm", "CrashLoopBackOff", "", 4, "OOMKilled, exit code 137"),),
    )
    assert pending.unschedulable == UNSCHEDULABLE
    assert events == [ClusterEvent("p-1", "FailedScheduling", "0/1 nodes are available")]
    assert (found, absent) == (True, False)
    queries = [urllib.parse.parse_qs(urllib.parse.urlsplit(p).query) for p in server.paths]
    assert {"labelSelector": [f"{LWS_NAME_LABEL}={LWS_NAME}"]} in queries
    assert {"fieldSelector": ["type=Warning"]} in queries
