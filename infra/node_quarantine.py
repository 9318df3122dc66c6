"""Cards and quarantines on a cluster: what the inventory shows, and what the nodes' state says.

Device plugins count cards, they do not name the one a pod holds, so on a cluster a card's
index is a *slot* of its node, ``0..capacity-1``, not a device id. :func:`card_view` lays the
slots out honestly: the stored quarantines keep their slots; the cards the device plugin no
longer advertises (``allocatable`` below ``capacity``) are quarantined slots too; the pods'
requests fill the lowest remaining slots, naming aif's model and instance where the pod is
aif's (another workload's pod shows as ``pod``); the rest are free. A quarantined slot still
held by a pod is shown quarantined.

The unit of fault isolation on a cluster is the node: :func:`avoided_nodes` is every node with
a quarantined card that is not on probation, and aif's models are kept off all of it (a
multi-card engine on the healthy neighbours of a failing card tends to fail with it).
:func:`node_signals` tells which quarantines the nodes' state makes or ends:

- a card the device plugin drops from ``allocatable`` is quarantined (by ``device-plugin``),
  and released when it is advertised again;
- a node that is not Ready has all its cards quarantined (by ``node``), released once it has
  been Ready again for the probation (``AIF_QUARANTINE_PROBATION_S``; at once with 0);
- a card quarantined by one device fault (by ``engine``, :func:`fault_quarantine`) goes on
  probation after ``AIF_QUARANTINE_PROBATION_S`` (its node takes aif's models again) and is
  released after a second probation without a new fault; a second fault keeps it until an
  admin releases it, as locally. Admins' quarantines stay until an admin releases them.

Pure rules: reading the cluster is :mod:`infra.node_inventory`'s, storing and auditing the
API's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from domain.accelerators import BY_ENGINE, CardState, Quarantine, on_probation
from infra.node_inventory import CardPod, ClusterCards, NodeCards

# Who quarantined a card when the cluster said so.
BY_DEVICE_PLUGIN = "device-plugin"
BY_NODE = "node"
DROPPED_REASON = "the device plugin no longer advertises it"

Key = tuple[str, int]


class FaultIsolation(Protocol):
    """What the Kubernetes deployer asks of the inventory; blocking, called from threads."""

    def avoided_nodes(self, resource_type: str) -> frozenset[str]:
        """Nodes of ``resource_type`` cards to keep the models off (read at most every few s)."""
        ...

    def device_fault(
        self, node: str, device: int | None, reason: str, model: tuple[str, str]
    ) -> None:
        """A pod of ``model`` (id, name) on ``node`` failed with a device error."""
        ...


def _fill(node: NodeCards, taken: set[int], pods: Collection[CardPod]) -> dict[int, CardPod]:
    """Each pod's cards on the lowest slots not quarantined, pods in name order."""
    free = (i for i in range(node.capacity) if i not in taken)
    held: dict[int, CardPod] = {}
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        for _ in range(pod.cards):
            index = next(free, None)
            if index is None:
                return held
            held[index] = pod
    return held


def _card(
    node: NodeCards, index: int, q: Quarantine | None, pod: CardPod | None,
    names: Mapping[str, tuple[str, str]],
) -> dict[str, Any]:  # fmt: skip
    state = CardState.QUARANTINED if q else CardState.ALLOCATED if pod else CardState.FREE
    card: dict[str, Any] = {"node": node.name, "index": index,
                            "resource_type": node.resource_type, "state": state.value}  # fmt: skip
    if q is not None:
        card["quarantine"] = q.model_dump(mode="json", exclude={"node", "index"})
    elif pod is not None:
        card["pod"] = f"{pod.namespace}/{pod.name}"
        if pod.model_id:
            model_id, name = names.get(pod.model_id, (pod.model_id, ""))
            card.update(model_id=model_id, model=name, instance_id=pod.instance_id)
    return card


def _dropped(node: NodeCards, index: int) -> Quarantine:
    return Quarantine(
        node=node.name, index=index, resource_type=node.resource_type, by=BY_DEVICE_PLUGIN,
        reason=f"{DROPPED_REASON} (allocatable {node.allocatable} of {node.capacity})",
    )  # fmt: skip


def card_view(
    cards: ClusterCards,
    quarantines: Collection[Quarantine],
    names: Mapping[str, tuple[str, str]],
) -> dict[str, Any]:
    """The inventory in the API's shape; ``names`` maps a pod's model label to (id, name)."""
    stored = {q.key: q for q in quarantines}
    out_cards: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    totals: dict[str, dict[str, int]] = {}
    for node in cards.nodes:
        name = node.name
        slots = {i: stored[(name, i)] for i in range(node.capacity) if (name, i) in stored}
        for i in range(node.allocatable, node.capacity):
            slots.setdefault(i, _dropped(node, i))
        pods = [p for p in cards.pods if (p.node, p.resource_type) == (name, node.resource_type)]
        held = _fill(node, set(slots), pods)
        counts = dict.fromkeys((s.value for s in CardState), 0)
        for index in range(node.capacity):
            card = _card(node, index, slots.get(index), held.get(index), names)
            counts[card["state"]] += 1
            out_cards.append(card)
        nodes.append({"node": node.name, "resource_type": node.resource_type, **counts,
                      "capacity": node.capacity, "allocatable": node.allocatable,
                      "ready": node.ready})  # fmt: skip
        per_type = totals.setdefault(node.resource_type, dict.fromkeys(counts, 0))
        for state, count in counts.items():
            per_type[state] += count
    return {"totals": totals, "nodes": nodes, "cards": out_cards}


def exists(cards: ClusterCards, quarantines: Collection[Quarantine], node: str, index: int) -> bool:
    """A slot of a node, or a stored quarantine (so a node gone can still be released)."""
    if any(q.key == (node, index) for q in quarantines):
        return True
    return any(n.name == node and 0 <= index < n.capacity for n in cards.nodes)


def card_state(
    cards: ClusterCards, quarantines: Collection[Quarantine], node: str, index: int
) -> str:
    view = card_view(cards, quarantines, {})
    found = next((c for c in view["cards"] if (c["node"], c["index"]) == (node, index)), None)
    return str(found["state"]) if found else CardState.FREE.value


def avoided_nodes(
    quarantines: Collection[Quarantine], probation_s: float, now: datetime, resource_type: str
) -> frozenset[str]:
    """Nodes aif's models of ``resource_type`` are kept off: those with a quarantined card of
    that type (or of an unknown one) not on probation."""
    return frozenset(
        q.node
        for q in quarantines
        if q.resource_type in (resource_type, "") and not on_probation(q, probation_s, now)
    )


@dataclass(frozen=True)
class Verdict:
    """Quarantines the cluster's state makes, and those it ends (with why)."""

    quarantine: tuple[Quarantine, ...] = ()
    release: tuple[tuple[Quarantine, str], ...] = ()


def node_signals(
    cards: ClusterCards,
    quarantines: Mapping[Key, Quarantine],
    probation_s: float,
    now: datetime,
    not_ready_seen: Mapping[str, datetime],
) -> Verdict:
    """What the nodes say now (see the module docstring); ``not_ready_seen`` is when each node
    was last seen not Ready."""
    made: list[Quarantine] = []
    for node in cards.nodes:
        for index in range(node.capacity):
            if (node.name, index) in quarantines:
                continue
            if not node.ready:
                made.append(Quarantine(node=node.name, index=index, by=BY_NODE,
                                       resource_type=node.resource_type,
                                       reason=f"node not Ready ({node.condition})"))  # fmt: skip
            elif index >= node.allocatable:
                made.append(_dropped(node, index))
    by_name = {n.name: n for n in cards.nodes}
    ended: list[tuple[Quarantine, str]] = []
    for q in quarantines.values():
        why = _ends(q, by_name.get(q.node), probation_s, now, not_ready_seen)
        if why:
            ended.append((q, why))
    return Verdict(tuple(made), tuple(ended))


def _ends(
    q: Quarantine, node: NodeCards | None, probation_s: float, now: datetime,
    not_ready_seen: Mapping[str, datetime],
) -> str:  # fmt: skip
    if q.by in (BY_DEVICE_PLUGIN, BY_NODE) and node is None:
        return "the node is no longer in the cluster"
    if q.by == BY_DEVICE_PLUGIN and node is not None and node.ready and q.index < node.allocatable:
        return "the device plugin advertises it again"
    if q.by == BY_NODE and node is not None and node.ready:
        since = not_ready_seen.get(q.node, q.since)
        if (now - since).total_seconds() >= probation_s:
            return "the node has been Ready again through its probation"
    held = (now - q.since).total_seconds() >= 2 * probation_s
    if q.by == BY_ENGINE and on_probation(q, probation_s, now) and held:
        return "no new fault through its probation"
    return ""


def fault_quarantine(
    node: NodeCards | None,
    node_name: str,
    device: int | None,
    reason: str,
    quarantines: Mapping[Key, Quarantine],
) -> Quarantine:
    """The quarantine a device fault on ``node_name`` makes: on the card the error names when
    it is one of the node's slots, else on its first slot not quarantined yet; a card already
    quarantined by a fault counts one more (a second fault needs an admin's release)."""
    capacity = node.capacity if node is not None else 0
    if device is not None and 0 <= device < max(capacity, 1):
        index = device
    else:
        free = [i for i in range(capacity) if (node_name, i) not in quarantines]
        faulted = [i for (n, i), q in quarantines.items() if n == node_name and q.by == BY_ENGINE]
        index = (free or sorted(faulted) or [0])[0]
    before = quarantines.get((node_name, index))
    faults = before.faults + 1 if before is not None and before.by == BY_ENGINE else 1
    resource_type = node.resource_type if node is not None else ""
    return Quarantine(node=node_name, index=index, resource_type=resource_type, reason=reason,
                      by=BY_ENGINE, faults=faults)  # fmt: skip


__all__ = [
    "BY_DEVICE_PLUGIN",
    "BY_NODE",
    "DROPPED_REASON",
    "FaultIsolation",
    "Verdict",
    "avoided_nodes",
    "card_state",
    "card_view",
    "exists",
    "fault_quarantine",
    "node_signals",
]
