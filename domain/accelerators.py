"""The accelerator inventory: which cards aif may use, who holds each, and which are quarantined.

A :class:`CardLedger` knows nodes (each with one resource type and cards ``0..n-1``), the
instances placed on them and the quarantined cards. :meth:`CardLedger.place` takes the cards
one instance needs, all of a pod's cards on one node and each pod of a multi-node group on a
node of its own, or returns None (and :meth:`CardLedger.shortage` says why, in the user's
words). Quarantined cards get no new instance, except one instance on a card whose probation
is over (:meth:`CardLedger.on_probation`). A :class:`Quarantine` is what the stores persist,
so it survives a restart.

Pure data and rules: no I/O. Who fills the ledger (the local deployer from
``AIF_LOCAL_ACCELERATORS``), who persists quarantines and audits them (:mod:`api.accelerators`)
and how the inventory is shown is left to others.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from domain.records import utc_now

__all__ = [
    "CardLedger",
    "CardState",
    "Placement",
    "Quarantine",
    "card_name",
    "on_probation",
    "parse_local_accelerators",
]

# Who quarantined a card when no admin did.
BY_ENGINE = "engine"


class CardState(enum.StrEnum):
    FREE = "free"
    ALLOCATED = "allocated"
    QUARANTINED = "quarantined"


class Quarantine(BaseModel):
    """One card taken out of service, as stored."""

    model_config = ConfigDict(extra="ignore")

    node: str
    index: int = Field(ge=0)
    resource_type: str = ""
    reason: str
    since: datetime = Field(default_factory=utc_now)
    # "engine" (a device fault), or the admin key that quarantined it.
    by: str = BY_ENGINE
    # Device faults seen on the card; a second one means no probation, only an admin's release.
    faults: int = 1

    @property
    def key(self) -> tuple[str, int]:
        return self.node, self.index


def card_name(node: str, index: int) -> str:
    return f"{node}/{index}"


def on_probation(q: Quarantine | None, probation_s: float, now: datetime) -> bool:
    """Quarantined once by a device fault and past its probation: it may be tried again."""
    if q is None or not probation_s or q.by != BY_ENGINE or q.faults > 1:
        return False
    return (now - q.since).total_seconds() >= probation_s


def parse_local_accelerators(value: str) -> dict[str, int]:
    """``8`` (one node, ``local``) or ``{"node-a": 8, "node-b": 8}``: cards per node."""
    text = value.strip()
    if text.isdigit():
        return {"local": int(text)}
    try:
        nodes = json.loads(text)
    except ValueError:
        nodes = None
    if not isinstance(nodes, dict) or not nodes:
        raise ValueError(
            f"AIF_LOCAL_ACCELERATORS must be a card count or a JSON object of node: count, "
            f"got {value!r}"
        )
    for node, count in nodes.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"AIF_LOCAL_ACCELERATORS: node {node!r} needs a card count >= 0")
    return dict(nodes)


@dataclass(frozen=True)
class Placement:
    """The cards one instance holds: ``(node, indices)`` per pod."""

    pods: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def names(self) -> list[str]:
        return [card_name(node, i) for node, indices in self.pods for i in indices]

    @property
    def visible_devices(self) -> str:
        """The first pod's cards as the runtimes take them (``0,1``)."""
        return ",".join(str(i) for i in self.pods[0][1]) if self.pods else ""


@dataclass
class _Holder:
    model_id: str
    model_name: str
    instance_id: str


@dataclass
class CardLedger:
    """Nodes, holders and quarantines of one inventory (see the module docstring)."""

    nodes: dict[str, int]
    resource_type: str
    probation_s: float = 0.0
    _held: dict[tuple[str, int], _Holder] = field(default_factory=dict)
    quarantines: dict[tuple[str, int], Quarantine] = field(default_factory=dict)

    def state(self, node: str, index: int) -> CardState:
        if (node, index) in self.quarantines:
            return CardState.QUARANTINED
        return CardState.ALLOCATED if (node, index) in self._held else CardState.FREE

    def exists(self, node: str, index: int) -> bool:
        return 0 <= index < self.nodes.get(node, 0)

    def on_probation(self, key: tuple[str, int], now: datetime) -> bool:
        """Quarantined once by a device fault and past its probation: one instance may try it."""
        return on_probation(self.quarantines.get(key), self.probation_s, now)

    def _usable(self, node: str, now: datetime) -> list[int]:
        return [
            i
            for i in range(self.nodes[node])
            if (node, i) not in self._held
            and ((node, i) not in self.quarantines or self.on_probation((node, i), now))
        ]

    def place(
        self,
        resource_type: str,
        cards_per_pod: int,
        pods: int,
        holder: tuple[str, str, str],
        now: datetime | None = None,
    ) -> Placement | None:
        """Take the cards of one instance for ``holder`` (model id, model name, instance id).

        The fullest nodes that fit come first (best fit), so large free blocks stay whole.
        """
        if resource_type != self.resource_type:
            return None
        moment = now or utc_now()
        free = {node: self._usable(node, moment) for node in self.nodes}
        fitting = sorted((n for n in free if len(free[n]) >= cards_per_pod), key=lambda n: (
            len(free[n]), n))  # fmt: skip
        if len(fitting) < pods:
            return None
        chosen = tuple((n, tuple(free[n][:cards_per_pod])) for n in fitting[:pods])
        for node, indices in chosen:
            for index in indices:
                self._held[(node, index)] = _Holder(*holder)
        return Placement(chosen)

    def release(self, instance_id: str) -> None:
        for key in [k for k, h in self._held.items() if h.instance_id == instance_id]:
            del self._held[key]

    def holder(self, key: tuple[str, int]) -> tuple[str, str, str] | None:
        h = self._held.get(key)
        return (h.model_id, h.model_name, h.instance_id) if h else None

    def shortage(self, resource_type: str, cards_per_pod: int, pods: int) -> str:
        """Why an instance of this shape cannot be placed now."""
        if resource_type != self.resource_type:
            return f"no node offers {resource_type} (this inventory has {self.resource_type})"
        now = utc_now()
        free = {node: len(self._usable(node, now)) for node in self.nodes}
        where = "on one node" if pods == 1 else f"on each of {pods} nodes"
        best = max(free, key=lambda n: (free[n], n), default="")
        block = f"{free[best]} ({best})" if best else "0"
        return (
            f"waiting for {cards_per_pod} {resource_type} cards {where}; "
            f"the largest free block is {block}"
        )

    def cards(self) -> list[dict[str, object]]:
        """Every card with its state, holder or quarantine: the API's view."""
        out: list[dict[str, object]] = []
        for node, count in self.nodes.items():
            for index in range(count):
                card: dict[str, object] = {
                    "node": node,
                    "index": index,
                    "resource_type": self.resource_type,
                    "state": self.state(node, index).value,
                }
                held = self._held.get((node, index))
                if held is not None:
                    card.update(model_id=held.model_id, model=held.model_name,
                                instance_id=held.instance_id)  # fmt: skip
                q = self.quarantines.get((node, index))
                if q is not None:
                    card["quarantine"] = q.model_dump(mode="json", exclude={"node", "index"})
                out.append(card)
        return out

    def totals(self) -> dict[tuple[str, CardState], int]:
        """Cards per (node, state)."""
        counts = {(n, s): 0 for n in self.nodes for s in CardState}
        for node, count in self.nodes.items():
            for index in range(count):
                counts[(node, self.state(node, index))] += 1
        return counts
