"""The cluster's cards read from nodes and pods as the API server returns them, and laid out.

Nodes and pods are JSON as ``kubectl get -o json`` shows them (an Ascend node whose device
plugin dropped a card from ``allocatable``, a NotReady one, a GPU node, a CPU-only node), read
by :class:`KubernetesNodes` through the official client from a fake API server.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from domain.accelerators import Quarantine
from infra.node_inventory import (
    POD_FIELD_SELECTOR,
    TAINT_KEY,
    CardPod,
    ClusterCards,
    KubernetesNodes,
    NodeCards,
)
from infra.node_quarantine import BY_DEVICE_PLUGIN, DROPPED_REASON, card_view
from tests.infra.fake_api_server import serving

ASCEND = "huawei.com/ascend-1980"
GPU = "nvidia.com/gpu"
LWS = "qwen-7b-d9705112"
MODEL_ID = "d97051120764490daf846053e16d4f25"


def node(
    name: str, resources: dict[str, tuple[str, str]], ready: str = "True", **spec: Any
) -> dict[str, Any]:
    """A node as the API returns it; ``resources``: type -> (capacity, allocatable)."""
    base = {"cpu": ("192", "190"), "memory": ("1584Gi", "1500Gi"), "pods": ("110", "110")}
    everything = base | resources
    condition = {
        "type": "Ready",
        "status": ready,
        "reason": "KubeletReady" if ready == "True" else "NodeStatusUnknown",
        "message": "kubelet is posting ready status"
        if ready == "True"
        else "Kubelet stopped posting node status.",
        "lastHeartbeatTime": "2026-12-08T00:00:00Z",
        "lastTransitionTime": "2026-12-08T00:00:00Z",
    }
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "resourceVersion": "4711", "labels": {
            "kubernetes.io/hostname": name}},
        "spec": spec,
        "status": {
            "capacity": {k: c for k, (c, _) in everything.items()},
            "allocatable": {k: a for k, (_, a) in everything.items()},
            "conditions": [condition],
        },
    }  # fmt: skip


def pod(
    name: str, node_name: str | None, cards: dict[str, str], labels: dict[str, str] | None = None,
    namespace: str = "aif-models", phase: str = "Running", init: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    resources = {"requests": {"cpu": "8", **cards}, "limits": {"cpu": "16", **cards}}
    spec: dict[str, Any] = {
        "containers": [{"name": "vllm", "image": "vllm", "resources": resources}]
    }
    if node_name:
        spec["nodeName"] = node_name
    if init:
        spec["initContainers"] = [{"name": "copy", "image": "x",
                                   "resources": {"requests": init, "limits": init}}]  # fmt: skip
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": spec,
        "status": {"phase": phase},
    }


def aif_labels(group: int, worker: int | None = None) -> dict[str, str]:
    labels = {
        "xds/modelId": MODEL_ID,
        "leaderworkerset.sigs.k8s.io/name": LWS,
        "leaderworkerset.sigs.k8s.io/group-index": str(group),
    }
    if worker is not None:
        labels["leaderworkerset.sigs.k8s.io/worker-index"] = str(worker)
    return labels


NODES = {
    "kind": "NodeList",
    "apiVersion": "v1",
    "items": [
        # The device plugin found 8 cards and advertises 7: one went unhealthy.
        node("ascend-a", {ASCEND: ("8", "7")}),
        node("ascend-b", {ASCEND: ("8", "8")}, ready="Unknown"),
        node("gpu-a", {GPU: ("4", "4")}, taints=[
            {"key": TAINT_KEY, "effect": "NoSchedule"},
            {"key": "dedicated", "value": "llm", "effect": "NoExecute"}]),
        node("cpu-a", {}),
    ],
}  # fmt: skip
PODS = {
    "kind": "PodList",
    "apiVersion": "v1",
    "items": [
        pod(f"{LWS}-0", "ascend-a", {ASCEND: "4"}, aif_labels(0, 0)),
        pod(f"{LWS}-0-1", "ascend-b", {ASCEND: "4"}, aif_labels(0, 1)),
        # Someone else's training job holds two cards of ascend-a.
        pod("train-0", "ascend-a", {ASCEND: "2"}, namespace="research"),
        pod("web-0", "cpu-a", {}, namespace="default"),
        # Not scheduled: the field selector leaves it out on a real server; it holds nothing.
        pod(f"{LWS}-1", None, {ASCEND: "4"}, aif_labels(1, 0), phase="Pending"),
        pod("notebook-0", "gpu-a", {GPU: "1"}, namespace="research", init={GPU: "2"}),
    ],
}


def read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ClusterCards, list[str]]:
    with serving({"/api/v1/nodes": NODES, "/api/v1/pods": PODS}, tmp_path, monkeypatch) as api:
        reader = KubernetesNodes()
        try:
            cards = reader.read()
        finally:
            reader.close()
    return cards, api.paths


def test_nodes_and_pods_are_read_in_two_lists_of_scheduled_pods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cards, paths = read(tmp_path, monkeypatch)

    assert [urllib.parse.urlsplit(p).path for p in paths] == ["/api/v1/nodes", "/api/v1/pods"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(paths[1]).query)
    assert query["fieldSelector"] == [POD_FIELD_SELECTOR]
    assert cards.nodes == (
        NodeCards("ascend-a", ASCEND, 8, 7),
        NodeCards("ascend-b", ASCEND, 8, 8, ready=False,
                  condition="NodeStatusUnknown: Kubelet stopped posting node status."),
        NodeCards("gpu-a", GPU, 4, 4, tainted=True),
    )  # fmt: skip
    assert cards.pods == (
        CardPod("aif-models", f"{LWS}-0", "ascend-a", ASCEND, 4, MODEL_ID, f"{LWS}-0"),
        CardPod("aif-models", f"{LWS}-0-1", "ascend-b", ASCEND, 4, MODEL_ID, f"{LWS}-0"),
        CardPod("research", "train-0", "ascend-a", ASCEND, 2),
        # An init container asking for more than the containers: the pod holds that many.
        CardPod("research", "notebook-0", "gpu-a", GPU, 2),
    )


def test_the_view_lays_out_slots_quarantines_and_holders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cards, _ = read(tmp_path, monkeypatch)
    admin = Quarantine(node="ascend-a", index=0, resource_type=ASCEND, reason="ECC in dmesg",
                       by="key-admin", faults=2)  # fmt: skip

    view = card_view(cards, [admin], {MODEL_ID: (MODEL_ID, "Qwen-7B")})

    ascend_a = [c for c in view["cards"] if c["node"] == "ascend-a"]
    states = [c["state"] for c in ascend_a]
    # Slot 0 an admin's, slot 7 the one the plugin dropped; the pods fill the lowest others.
    assert states == ["quarantined", *["allocated"] * 6, "quarantined"]
    assert ascend_a[0]["quarantine"]["by"] == "key-admin"
    dropped = ascend_a[7]["quarantine"]
    assert dropped["by"] == BY_DEVICE_PLUGIN
    assert dropped["reason"] == f"{DROPPED_REASON} (allocatable 7 of 8)"
    ours = [c for c in ascend_a if c.get("model") == "Qwen-7B"]
    assert [c["index"] for c in ours] == [1, 2, 3, 4]
    assert {c["instance_id"] for c in ours} == {f"{LWS}-0"}
    theirs = [c for c in ascend_a if c.get("pod") == "research/train-0"]
    assert [c["index"] for c in theirs] == [5, 6] and "model" not in theirs[0]
    nodes = {n["node"]: n for n in view["nodes"]}
    assert nodes["ascend-a"] | {} == {
        "node": "ascend-a", "resource_type": ASCEND, "free": 0, "allocated": 6,
        "quarantined": 2, "capacity": 8, "allocatable": 7, "ready": True,
    }  # fmt: skip
    assert nodes["ascend-b"]["ready"] is False
    assert view["totals"] == {
        ASCEND: {"free": 4, "allocated": 10, "quarantined": 2},
        GPU: {"free": 2, "allocated": 2, "quarantined": 0},
    }


def test_the_taint_is_written_back_with_the_others_under_the_nodes_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu = NODES["items"][2]
    routes = {"/api/v1/nodes/gpu-a": gpu, "/api/v1/nodes/ascend-a": NODES["items"][0]}
    with serving(routes, tmp_path, monkeypatch) as api:
        reader = KubernetesNodes()
        try:
            reader.set_taint("gpu-a", False)
            reader.set_taint("ascend-a", True)
        finally:
            reader.close()

    (path, untaint), (_, taint) = api.patches
    assert path == "/api/v1/nodes/gpu-a"
    assert untaint == {
        "metadata": {"resourceVersion": "4711"},
        "spec": {"taints": [{"key": "dedicated", "value": "llm", "effect": "NoExecute"}]},
    }
    assert taint["spec"]["taints"] == [{"key": TAINT_KEY, "effect": "NoSchedule"}]
