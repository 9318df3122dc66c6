"""The accelerator inventory on a cluster: the frontend answers from the nodes it reads, the
model-job-executor's inventory quarantines what the nodes say, shares the admins' quarantines
through the store, and keeps aif's taint on the nodes it avoids.

Nodes and pods are the API server's JSON (:mod:`tests.infra.test_node_inventory`): parsed by
the official client's models here, served to the real client by a fake API server for the app.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kubernetes.client import V1Node, V1Pod

from api.accelerators import InventoryCollector
from api.app import Role, create_app
from api.cluster_accelerators import ClusterAccelerators
from api.errors import StoreUnavailableError
from api.store import SqliteModelStore
from domain.settings import Settings
from infra.node_inventory import TAINT_KEY, ClusterCards, card_pods, node_cards
from tests.api.test_keys import ADMIN, bearer, keyed
from tests.conftest import register_body
from tests.fakes import FakeDeployer
from tests.infra.fake_api_server import serving
from tests.infra.test_node_inventory import ASCEND, MODEL_ID, NODES, PODS, node

REFRESH_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeNodes:
    """A NodeReader over the API's JSON: edit ``nodes`` as a cluster would change."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = copy.deepcopy(NODES["items"])
        self.pods: list[dict[str, Any]] = copy.deepcopy(PODS["items"])
        self.reads = 0
        self.taints: list[tuple[str, bool]] = []
        self.fail: Exception | None = None
        self.closed = False

    def read(self) -> ClusterCards:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return ClusterCards(
            tuple(n for d in self.nodes for n in node_cards(V1Node.from_dict(d))),
            tuple(p for d in self.pods for p in card_pods(V1Pod.from_dict(d))),
        )

    def set_taint(self, node_name: str, tainted: bool) -> None:
        self.taints.append((node_name, tainted))
        found = next(d for d in self.nodes if d["metadata"]["name"] == node_name)
        others = [t for t in found["spec"].get("taints", []) if t["key"] != TAINT_KEY]
        found["spec"]["taints"] = others + ([{"key": TAINT_KEY, "effect": "NoSchedule"}]
                                            if tainted else [])  # fmt: skip

    def close(self) -> None:
        self.closed = True

    def replace(self, name: str, changed: dict[str, Any]) -> None:
        self.nodes = [changed if d["metadata"]["name"] == name else d for d in self.nodes]


@pytest.fixture
def cluster_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"runtime": "kubernetes", "quarantine_probation_s": 900.0,
                                       "cluster_inventory_refresh_s": REFRESH_S})  # fmt: skip


def inventory(
    settings: Settings, store: SqliteModelStore, nodes: FakeNodes, clock: Clock, acts: bool
) -> ClusterAccelerators:
    return ClusterAccelerators(settings, store, nodes, acts=acts, clock=clock)


def audited(store: SqliteModelStore) -> list[tuple[str, str, str]]:
    return [(e.action.value, e.actor, e.reason) for e in store.events()]


def test_the_executor_quarantines_what_the_nodes_say_and_releases_what_they_no_longer_say(
    cluster_settings: Settings, store: SqliteModelStore
) -> None:
    nodes, clock = FakeNodes(), Clock()
    executor = inventory(cluster_settings, store, nodes, clock, acts=True)

    # ascend-a advertises 7 of its 8 cards; ascend-b is NotReady.
    assert executor.avoided_nodes(ASCEND) == {"ascend-a", "ascend-b"}
    stored = {q.key: q.by for q in store.quarantines()}
    assert stored == {("ascend-a", 7): "device-plugin",
                      **{("ascend-b", i): "node" for i in range(8)}}  # fmt: skip
    assert audited(store)[0] == (
        "accelerator.quarantine", "device-plugin",
        "the device plugin no longer advertises it (allocatable 7 of 8)",
    )  # fmt: skip
    assert len(audited(store)) == 9

    # Asked again within the refresh interval: no read.
    executor.avoided_nodes(ASCEND)
    assert nodes.reads == 1

    # The plugin advertises the card again: released, audited.
    nodes.replace("ascend-a", node("ascend-a", {ASCEND: ("8", "8")}))
    clock.now += REFRESH_S
    assert executor.avoided_nodes(ASCEND) == {"ascend-b"}
    assert ("ascend-a", 7) not in {q.key for q in store.quarantines()}
    assert audited(store)[-1] == ("accelerator.release", "device-plugin",
                                  "the device plugin advertises it again")  # fmt: skip


def test_an_admins_quarantine_on_the_frontend_reaches_the_executor_at_its_next_read(
    cluster_settings: Settings, store: SqliteModelStore
) -> None:
    nodes, clock = FakeNodes(), Clock()
    frontend = inventory(cluster_settings, store, nodes, clock, acts=False)
    executor = inventory(cluster_settings, store, nodes, clock, acts=True)
    assert "gpu-a" not in executor.avoided_nodes("nvidia.com/gpu")

    frontend.quarantine("gpu-a", 2, "ECC errors in dmesg", "key-admin")

    # The frontend's own inventory quarantines nothing the nodes say: only the executor acts.
    assert {q.key for q in store.quarantines() if q.by != "key-admin"} == {
        ("ascend-a", 7), *(("ascend-b", i) for i in range(8))}  # fmt: skip
    assert executor.avoided_nodes("nvidia.com/gpu") == frozenset()
    clock.now += REFRESH_S
    assert executor.avoided_nodes("nvidia.com/gpu") == {"gpu-a"}
    assert frontend.state("gpu-a", 2) == "quarantined"
    assert frontend.release("gpu-a", 2, "key-admin", "by an admin") is True
    clock.now += REFRESH_S
    assert executor.avoided_nodes("nvidia.com/gpu") == frozenset()


def test_a_device_fault_is_stored_audited_and_counted(
    cluster_settings: Settings, store: SqliteModelStore
) -> None:
    executor = inventory(cluster_settings, store, FakeNodes(), Clock(), acts=True)
    model = (MODEL_ID, "Qwen-7B")

    executor.device_fault("gpu-a", None, "Xid 79, GPU has fallen off the bus", model)
    executor.device_fault("gpu-a", 0, "cudaErrorECCUncorrectable", model)

    [q] = [q for q in store.quarantines() if q.node == "gpu-a"]
    assert (q.index, q.by, q.faults, q.reason) == (0, "engine", 2, "cudaErrorECCUncorrectable")
    [event, *_] = [e for e in reversed(store.events()) if e.model_id == MODEL_ID]
    assert (event.model_name, event.changes) == ("Qwen-7B", {"card": {"to": "gpu-a/0"}})


def test_with_tainting_the_avoided_nodes_carry_aifs_taint_and_lose_it_when_released(
    cluster_settings: Settings, store: SqliteModelStore
) -> None:
    settings = cluster_settings.model_copy(update={"taint_faulty_nodes": True})
    nodes, clock = FakeNodes(), Clock()
    executor = inventory(settings, store, nodes, clock, acts=True)

    executor.refresh()

    # gpu-a carried a taint left from before and is not avoided: it goes.
    assert sorted(nodes.taints) == [("ascend-a", True), ("ascend-b", True), ("gpu-a", False)]
    clock.now += REFRESH_S
    executor.refresh()
    assert len(nodes.taints) == 3  # they hold: nothing to write
    nodes.nodes[0]["status"]["allocatable"][ASCEND] = "8"
    clock.now += REFRESH_S
    executor.refresh()
    assert nodes.taints[3:] == [("ascend-a", False)]
    # Without the setting, no taint is touched.
    plain = inventory(cluster_settings, store, FakeNodes(), Clock(), acts=True)
    plain.refresh()
    assert nodes.taints[4:] == []


def test_a_cluster_that_cannot_be_read_is_a_503(
    cluster_settings: Settings, store: SqliteModelStore
) -> None:
    nodes = FakeNodes()
    nodes.fail = ConnectionRefusedError("connection refused")
    clock = Clock()
    frontend = inventory(cluster_settings, store, nodes, clock, acts=False)
    with pytest.raises(StoreUnavailableError, match="cannot read the cluster's nodes"):
        frontend.view()
    # Not read again before the interval, however often asked; the gauge has no samples.
    with pytest.raises(StoreUnavailableError):
        frontend.view()
    [gauge] = InventoryCollector(frontend).collect()
    assert (gauge.samples, nodes.reads) == ([], 1)
    nodes.fail = None
    clock.now += REFRESH_S
    assert frontend.view()["totals"][ASCEND]["allocated"] == 10


def test_a_frontend_on_a_cluster_answers_the_routes_from_the_nodes_it_reads(
    cluster_settings: Settings, store: SqliteModelStore, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    settings = keyed(cluster_settings, chat_executor_url="http://127.0.0.1:9")
    app = create_app(settings, frozenset({Role.FRONTEND}), store=store,
                     deployer_factory=lambda _: FakeDeployer())  # fmt: skip
    pods = copy.deepcopy(PODS)
    routes = {"/api/v1/nodes": NODES, "/api/v1/pods": pods}
    with (
        serving(routes, tmp_path, monkeypatch) as api,
        TestClient(app, headers=bearer(ADMIN)) as admin,
    ):
        model = admin.post("/v1/models", json=register_body()).json()["model"]
        for item in pods["items"]:
            if "xds/modelId" in item["metadata"]["labels"]:
                item["metadata"]["labels"]["xds/modelId"] = model["id"]
        view = admin.get("/v1/accelerators").json()
        # The dropped card shows; ascend-b, NotReady, is the executor's to quarantine.
        assert view["totals"][ASCEND] == {"free": 5, "allocated": 10, "quarantined": 1}
        answer = admin.post("/v1/accelerators/ascend-a/1/quarantine", json={"reason": "ECC"})
        assert answer.json() == {"node": "ascend-a", "index": 1, "state": "quarantined",
                                 "changed": True}  # fmt: skip
        again = admin.get("/v1/accelerators").json()
        scrape = admin.get("/metrics").text
        missing = admin.post("/v1/accelerators/ascend-a/8/quarantine", json={"reason": "x"})
    # One read of each list for all of that.
    assert [p.split("?")[0] for p in api.paths] == ["/api/v1/nodes", "/api/v1/pods"]
    assert [q.key for q in store.quarantines()] == [("ascend-a", 1)]
    cards = {(c["node"], c["index"]): c for c in again["cards"]}
    assert cards[("ascend-a", 1)]["quarantine"]["reason"] == "ECC"
    # The pods' model label is the model's id; the store names the model.
    ours = [c for c in again["cards"] if c.get("instance_id")]
    assert {(c["model_id"], c["model"]) for c in ours} == {(model["id"], model["name"])}
    assert 'aif_accelerators{node="ascend-a",resource_type="huawei.com/ascend-1980",' \
        'state="quarantined"} 2.0' in scrape  # fmt: skip
    assert missing.status_code == 404
