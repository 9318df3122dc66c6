"""PulumiDeployer keeping models off quarantined nodes, and telling the inventory of faults.

Through the fake Pulumi CLI and the fake cluster (whose pods land on nodes, and whose LWS
honours the node affinity the last update applied): the affinity follows the quarantined set,
a group left on a quarantined node is deleted and made again elsewhere, a pod that terminated
with a device error is reported once, and a crash loop confined to one node, while the model
serves on others, quarantines that node instead of failing the model.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pulumi.automation import CommandResult

from domain.deployment import DeploymentSpec, Phase
from domain.settings import Settings
from infra.cluster_observer import PodStatus
from infra.diagnosis import CRASH_LOOP_RECREATIONS
from infra.manifests import k8s_name
from infra.model_stack import AVOID_NODES_KEY
from infra.pulumi_deployer import PulumiDeployer
from tests.infra.fake_cluster import FakeCluster
from tests.infra.fake_pulumi import LWS_NAME, MODEL_ID, FakePulumi
from tests.infra.test_pulumi_deployer import Clock, make_spec

ASCEND = "huawei.com/ascend-1980"
# What vLLM-Ascend leaves as its termination message when a card fails under it.
ASCEND_FAULT = (
    "INFO 12-08 00:41:07 [worker.py:312] Loading model weights took 14.2 GB\n"
    "[ERROR] RUNTIME(1873,python3):2026-12-08-00:41:09.512.301 [device.cc:386]1873 Init: "
    "aclrtSetDevice failed, device id=0, error code 507033\n"
    "RuntimeError: ACL stream synchronize failed, error code:507053"
)


class Isolation:
    """The inventory as the deployer sees it: a quarantined set, and the faults it is told."""

    def __init__(self) -> None:
        self.avoid: dict[str, frozenset[str]] = {}
        self.faults: list[tuple[str, int | None, str, tuple[str, str]]] = []
        self.fail: Exception | None = None
        self.refuse_faults = 0  # the next faults reported fail (a store that is down)

    def avoided_nodes(self, resource_type: str) -> frozenset[str]:
        if self.fail is not None:
            raise self.fail
        return self.avoid.get(resource_type, frozenset())

    def device_fault(
        self, node: str, device: int | None, reason: str, model: tuple[str, str]
    ) -> None:
        if self.refuse_faults:
            self.refuse_faults -= 1
            raise ConnectionError("store down")
        self.faults.append((node, device, reason, model))


@pytest.fixture
def isolation() -> Isolation:
    return Isolation()


@pytest.fixture
def cli() -> FakePulumi:
    return FakePulumi()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cluster(cli: FakePulumi) -> FakeCluster:
    """`pulumi up` creates the LWS and applies its affinity (the stack's avoidNodes)."""
    cluster = FakeCluster()

    def up(config: Mapping[str, str]) -> None:
        cluster.avoid = set(json.loads(config[AVOID_NODES_KEY]))
        cluster.apply(k8s_name(config["modelName"], config["modelId"]), config["modelId"],
                      int(config["replicas"]))  # fmt: skip

    cli.on_up = up
    return cluster


@pytest.fixture
async def deployer(
    tmp_path: Path, cli: FakePulumi, cluster: FakeCluster, isolation: Isolation, clock: Clock
) -> AsyncIterator[PulumiDeployer]:
    settings = Settings(data_dir=tmp_path / "data", runtime="kubernetes", pulumi_workers=2)
    deployer = PulumiDeployer(settings, pulumi_command=cli, observer=cluster, clock=clock,
                              isolation=isolation)  # fmt: skip
    yield deployer
    await deployer.close()


def pods_on(cluster: FakeCluster) -> dict[str, str]:
    return {name: pod.node for name, pod in sorted(cluster.pod_map.items())}


async def test_a_quarantined_node_is_kept_off_and_its_group_made_again_elsewhere(
    deployer: PulumiDeployer, cli: FakePulumi, cluster: FakeCluster, isolation: Isolation
) -> None:
    state = await deployer.apply(make_spec(replicas=2))
    assert state.phase is Phase.READY
    assert json.loads(cli.stacks[MODEL_ID].config[AVOID_NODES_KEY]) == []
    assert pods_on(cluster) == {f"{LWS_NAME}-0": "node-a", f"{LWS_NAME}-1": "node-b"}
    ups = cli.verbs().count("up")

    isolation.avoid = {ASCEND: frozenset({"node-a"})}
    await deployer.apply(make_spec(replicas=2))

    # The new set is a new digest: a full update re-applies the affinity ...
    assert cli.verbs().count("up") == ups + 1
    assert json.loads(cli.stacks[MODEL_ID].config[AVOID_NODES_KEY]) == ["node-a"]
    # ... and the group on node-a is deleted; LWS makes it again where the affinity allows.
    assert cluster.deleted == [f"{LWS_NAME}-0"]
    assert "node-a" not in pods_on(cluster).values()
    # A model of another resource type is not kept off it.
    other = make_spec(resource_type="nvidia.com/gpu")
    assert cluster.avoid == {"node-a"}
    await deployer.apply(other)
    assert json.loads(cli.stacks[MODEL_ID].config[AVOID_NODES_KEY]) == []


async def test_no_group_moves_before_its_lws_carries_the_affinity(
    tmp_path: Path, cli: FakePulumi, cluster: FakeCluster, isolation: Isolation
) -> None:
    settings = Settings(data_dir=tmp_path / "data", runtime="kubernetes", pulumi_workers=2)
    deployer = PulumiDeployer(settings, pulumi_command=cli, observer=cluster,
                              isolation=isolation, apply_wait_s=0.01)  # fmt: skip
    try:
        await settled(deployer, make_spec(replicas=2))
        original = cli.run

        def slow(args: list[str], *rest: Any, **kwargs: Any) -> CommandResult:
            if "up" in args:
                time.sleep(0.3)
            return original(args, *rest, **kwargs)

        cli.run = slow  # type: ignore[method-assign]
        # A scale starts; while it runs, node-a is quarantined.
        assert (await deployer.apply(make_spec(replicas=3))).phase is Phase.PROGRESSING
        isolation.avoid = {ASCEND: frozenset({"node-a"})}
        await asyncio.sleep(0.4)
        # The scale ends: its LWS has no affinity yet, so nothing is deleted ...
        await deployer.apply(make_spec(replicas=3))
        assert cluster.deleted == []
        # ... until the update that applies it has run.
        await settled(deployer, make_spec(replicas=3))
        assert cluster.deleted == [f"{LWS_NAME}-0"]
    finally:
        await deployer.close()


async def settled(deployer: PulumiDeployer, spec: DeploymentSpec) -> None:
    deadline = time.monotonic() + 5
    while (await deployer.apply(spec)).phase is Phase.PROGRESSING:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_the_last_quarantined_set_is_kept_when_it_cannot_be_read(
    deployer: PulumiDeployer, cli: FakePulumi, isolation: Isolation
) -> None:
    isolation.avoid = {ASCEND: frozenset({"node-c"})}
    await deployer.apply(make_spec())
    ups = cli.verbs().count("up")

    isolation.fail = RuntimeError("store down")
    state = await deployer.apply(make_spec())

    assert state.phase is Phase.READY
    assert cli.verbs().count("up") == ups  # not an update dropping the affinity


async def test_a_pod_terminated_with_a_device_error_is_reported_once(
    deployer: PulumiDeployer, cluster: FakeCluster, isolation: Isolation, clock: Clock
) -> None:
    await deployer.apply(make_spec(replicas=2))
    leader = f"{LWS_NAME}-1"
    cluster.set_pod(leader, ready=False, termination_message=ASCEND_FAULT,
                    last_termination="vllm-ascend: Error, exit code 1")  # fmt: skip

    for _ in range(3):
        clock.now += 60
        await deployer.apply(make_spec(replicas=2))

    assert isolation.faults == [
        ("node-b", 0, "ACL stream synchronize failed, error code:507053",
         (MODEL_ID, "DeepSeek-R1-Distill-Qwen-7B"))
    ]  # fmt: skip


async def test_a_fault_the_inventory_could_not_take_is_reported_at_the_next_read(
    deployer: PulumiDeployer, cluster: FakeCluster, isolation: Isolation, clock: Clock
) -> None:
    await deployer.apply(make_spec())
    cluster.set_pod(f"{LWS_NAME}-0", ready=False, termination_message="Xid 48, DBE")
    isolation.refuse_faults = 1

    clock.now += 60
    assert (await deployer.apply(make_spec())).phase is not Phase.FAILED
    assert isolation.faults == []
    clock.now += 60
    await deployer.apply(make_spec())
    assert [f[2] for f in isolation.faults] == ["Xid 48, DBE"]


async def test_an_ordinary_crash_reports_no_device_fault(
    deployer: PulumiDeployer, cluster: FakeCluster, isolation: Isolation, clock: Clock
) -> None:
    await deployer.apply(make_spec())
    message = "ValueError: max_model_len 32768 exceeds the KV cache"
    cluster.set_pod(f"{LWS_NAME}-0", ready=False, termination_message=message)
    clock.now += 60
    await deployer.apply(make_spec())

    assert isolation.faults == []


async def test_a_crash_loop_on_one_node_while_the_model_serves_elsewhere_blames_the_node(
    deployer: PulumiDeployer, cluster: FakeCluster, isolation: Isolation, clock: Clock
) -> None:
    cluster.auto_ready = False
    await deployer.apply(make_spec(replicas=2))
    healthy, crashing = f"{LWS_NAME}-0", f"{LWS_NAME}-1"
    cluster.ready(healthy)
    assert cluster.pod_map[crashing].node == "node-b"

    for _ in range(CRASH_LOOP_RECREATIONS):
        cluster.crash(crashing)
        clock.now += 60
        state = await deployer.apply(make_spec(replicas=2))

    assert state.phase is not Phase.FAILED
    [(node, device, reason, _)] = isolation.faults
    assert (node, device) == ("node-b", None)
    assert f"recreated {CRASH_LOOP_RECREATIONS} times on this node" in reason


async def test_a_crash_loop_with_nothing_serving_elsewhere_fails_the_model(
    deployer: PulumiDeployer, cluster: FakeCluster, isolation: Isolation, clock: Clock
) -> None:
    cluster.auto_ready = False
    await deployer.apply(make_spec(replicas=1))
    for _ in range(CRASH_LOOP_RECREATIONS):
        cluster.crash(f"{LWS_NAME}-0")
        clock.now += 60
        state = await deployer.apply(make_spec(replicas=1))

    assert state.phase is Phase.FAILED and state.reason == "EngineCrashed"
    assert isolation.faults == []


def test_pods_carry_their_node(cluster: FakeCluster) -> None:
    cluster.apply(LWS_NAME, MODEL_ID, 3)
    assert all(isinstance(p, PodStatus) and p.node for p in cluster.pod_map.values())
