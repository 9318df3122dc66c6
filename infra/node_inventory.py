"""The cluster's accelerator cards as the nodes and the pods tell them, read in two lists.

A node advertises its cards in ``status.capacity`` (what the device plugin found) and
``status.allocatable`` (what it still offers: a card it finds unhealthy drops out of it).
Pods hold cards by requesting the resource (``huawei.com/ascend-1980``, ``nvidia.com/gpu``);
the device plugin never says *which* card a pod holds, so only counts are known: a
:class:`NodeCards` is a node's capacity, allocatable and readiness for one resource type and
the :class:`CardPod` s holding its cards. aif's pods are told apart by the labels the
manifests put on them (the model's id, the LWS name and group index: the instance).

:class:`KubernetesNodes` reads them with the official client, one list of nodes and one list
of the scheduled, non-terminated pods of every namespace (their requests count, whoever owns
them), and patches aif's ``NoSchedule`` taint on a node. How often to read, and what the counts
mean for quarantines, is :mod:`infra.node_quarantine`'s and the API's.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from domain.presets import SUPPORTED_RESOURCE_TYPES
from infra.cluster_observer import GROUP_INDEX_LABEL, KubernetesApi
from infra.manifests import LWS_NAME_LABEL

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, V1Node, V1Pod

# The taint aif puts on a quarantined node with aif:taintFaultyNodes.
TAINT_KEY = "aif/quarantined"
TAINT_EFFECT = "NoSchedule"
# The label every pod of an aif model carries (the product's template's).
MODEL_ID_LABEL = "xds/modelId"
# Pods that hold no card any more, and pods not on a node yet: neither counts.
POD_FIELD_SELECTOR = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"


@dataclass(frozen=True)
class CardPod:
    """A scheduled pod holding ``cards`` of a node's accelerators."""

    namespace: str
    name: str
    node: str
    resource_type: str
    cards: int
    model_id: str = ""  # aif's model (its label value); "" for anyone else's pod
    instance_id: str = ""  # the group's leader pod name, as the model's endpoints name it


@dataclass(frozen=True)
class NodeCards:
    """One node's cards of one resource type."""

    name: str
    resource_type: str
    capacity: int
    allocatable: int
    ready: bool = True
    condition: str = ""  # the Ready condition's reason and message when not ready
    tainted: bool = False  # carries aif's quarantine taint


@dataclass(frozen=True)
class ClusterCards:
    nodes: tuple[NodeCards, ...] = ()
    pods: tuple[CardPod, ...] = ()


class NodeReader(Protocol):
    """Reads the cluster's cards; synchronous, called from worker threads."""

    def read(self) -> ClusterCards: ...

    def set_taint(self, node: str, tainted: bool) -> None:
        """Add (or remove) aif's quarantine taint on ``node``."""
        ...

    def close(self) -> None: ...


def _count(quantity: Any) -> int:
    """A device count (``"8"``); anything fractional or unreadable counts as none."""
    try:
        return max(0, int(str(quantity)))
    except ValueError:
        return 0


def node_cards(
    node: V1Node, resource_types: Collection[str] = SUPPORTED_RESOURCE_TYPES
) -> list[NodeCards]:
    """The node's accelerators, one entry per resource type it has a capacity of."""
    meta, status, spec = node.metadata, node.status, node.spec
    name = (meta.name if meta else None) or ""
    capacity = (status.capacity if status else None) or {}
    allocatable = (status.allocatable if status else None) or {}
    conditions = {c.type: c for c in (status.conditions if status else None) or []}
    ready = conditions.get("Ready")
    is_ready = ready is not None and ready.status == "True"
    if ready is None:
        condition = "no Ready condition reported"
    else:
        condition = "" if is_ready else f"{ready.reason}: {ready.message}"
    taints = (spec.taints if spec else None) or []
    tainted = any(t.key == TAINT_KEY and t.effect == TAINT_EFFECT for t in taints)
    found = []
    for rt in resource_types:
        cards = _count(capacity.get(rt, 0))
        if cards:
            usable = _count(allocatable.get(rt, 0))
            found.append(NodeCards(name, rt, cards, usable, is_ready, condition, tainted))
    return found


def _requested(pod: V1Pod, resource_type: str) -> int:
    """The cards a pod holds: its containers' sum, or its largest init container's if more."""

    def of(container: Any) -> int:
        resources = container.resources
        if resources is None:
            return 0
        wanted = (resources.requests or {}).get(resource_type)
        if wanted is None:  # extended resources may give only limits: requests equal them
            wanted = (resources.limits or {}).get(resource_type, 0)
        return _count(wanted)

    spec = pod.spec
    if spec is None:
        return 0
    running = sum(of(c) for c in spec.containers or [])
    init = max((of(c) for c in spec.init_containers or []), default=0)
    return max(running, init)


def card_pods(
    pod: V1Pod, resource_types: Collection[str] = SUPPORTED_RESOURCE_TYPES
) -> list[CardPod]:
    """What the pod holds of each accelerator resource type (nothing for most pods)."""
    meta, spec = pod.metadata, pod.spec
    node = (spec.node_name if spec else None) or ""
    labels = (meta.labels if meta else None) or {}
    model_id = labels.get(MODEL_ID_LABEL, "")
    lws, group = labels.get(LWS_NAME_LABEL), labels.get(GROUP_INDEX_LABEL)
    instance = f"{lws}-{group}" if model_id and lws and group is not None else ""
    found = []
    for rt in resource_types:
        cards = _requested(pod, rt)
        if cards and node:
            found.append(CardPod((meta.namespace if meta else None) or "",
                                 (meta.name if meta else None) or "", node, rt, cards,
                                 model_id, instance))  # fmt: skip
    return found


class KubernetesNodes:
    """:class:`NodeReader` over the official client: in-cluster config, else KUBECONFIG."""

    def __init__(self, request_timeout_s: float = 10.0) -> None:
        self._timeout_s = request_timeout_s
        self._api = KubernetesApi()

    def _client(self) -> ApiClient:
        return self._api.client()

    def read(self) -> ClusterCards:
        from kubernetes import client

        api = client.CoreV1Api(self._client())
        nodes = api.list_node(_request_timeout=self._timeout_s).items
        pods = api.list_pod_for_all_namespaces(
            field_selector=POD_FIELD_SELECTOR, _request_timeout=self._timeout_s
        ).items
        return ClusterCards(
            tuple(n for node in nodes for n in node_cards(node)),
            tuple(p for pod in pods for p in card_pods(pod)),
        )

    def set_taint(self, node: str, tainted: bool) -> None:
        """Read the node's taints and write them back with or without aif's, guarded by the
        node's resourceVersion so that a taint someone else adds meanwhile is never lost."""
        from kubernetes import client

        api = client.CoreV1Api(self._client())
        current = api.read_node(node, _request_timeout=self._timeout_s)
        taints = [
            t.to_dict()
            for t in (current.spec.taints if current.spec else None) or []
            if t.key != TAINT_KEY
        ]
        if tainted:
            taints.append({"key": TAINT_KEY, "effect": TAINT_EFFECT})
        body = {
            "metadata": {
                "resourceVersion": current.metadata.resource_version if current.metadata else None
            },
            "spec": {"taints": [_camel_taint(t) for t in taints]},
        }
        api.patch_node(node, body, _request_timeout=self._timeout_s)

    def close(self) -> None:
        self._api.close()


def _camel_taint(taint: dict[str, Any]) -> dict[str, Any]:
    names = {"time_added": "timeAdded"}
    return {names.get(k, k): v for k, v in taint.items() if v is not None}


__all__ = [
    "MODEL_ID_LABEL",
    "POD_FIELD_SELECTOR",
    "TAINT_EFFECT",
    "TAINT_KEY",
    "CardPod",
    "ClusterCards",
    "KubernetesNodes",
    "NodeCards",
    "NodeReader",
    "card_pods",
    "node_cards",
]
