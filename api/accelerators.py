"""The local accelerator inventory as a service: the ledger, its quarantines kept and audited.

:class:`Accelerators` owns the :class:`~domain.accelerators.CardLedger` of this machine's
cards (``AIF_LOCAL_ACCELERATORS``). The local deployer places instances through it and reports
device faults to it; the admin routes read it and quarantine or release cards through it.
Every quarantine is written to the store (so it survives a restart) and to the audit trail.
The ``aif_accelerators`` gauge in ``/metrics`` is :class:`InventoryCollector`.

Placement rules are the ledger's; spawning engines is the deployer's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from api.errors import AcceleratorNotFound, StoreUnavailableError
from domain.accelerators import (
    BY_ENGINE,
    CardLedger,
    CardState,
    Placement,
    Quarantine,
    card_name,
    parse_local_accelerators,
)
from domain.keys import AuditAction, AuditEvent
from domain.settings import Settings
from domain.store import ModelStore, audit

logger = logging.getLogger(__name__)


class Inventory(Protocol):
    """What the admin routes and the gauge use: this machine's cards, or a cluster's
    (:class:`api.cluster_accelerators.ClusterAccelerators`)."""

    def view(self) -> dict[str, Any]: ...

    def state(self, node: str, index: int) -> str: ...

    def quarantine(self, node: str, index: int, reason: str, actor: str) -> Quarantine: ...

    def release(self, node: str, index: int, actor: str, reason: str = "") -> bool: ...


def record_quarantine(
    store: ModelStore, q: Quarantine, actor: str, model: tuple[str, str] = ("", "")
) -> None:
    """Store a quarantine (a restart keeps the card out of service), audit it and log it."""
    store.put_quarantine(q)
    name = card_name(q.node, q.index)
    audit(store, AuditEvent(actor=actor, action=AuditAction.ACCELERATOR_QUARANTINE,
                            model_id=model[0], model_name=model[1],
                            changes={"card": {"to": name}}, reason=q.reason))  # fmt: skip
    logger.warning("accelerator quarantined card=%s by=%s faults=%d model=%s reason=%s",
                   name, q.by, q.faults, model[1], q.reason)  # fmt: skip


def record_release(store: ModelStore, node: str, index: int, actor: str, reason: str) -> None:
    """Drop a card's stored quarantine, audit and log it."""
    store.drop_quarantine(node, index)
    audit(store, AuditEvent(actor=actor, action=AuditAction.ACCELERATOR_RELEASE,
                            changes={"card": {"from": card_name(node, index)}},
                            reason=reason))  # fmt: skip
    logger.info("accelerator released card=%s actor=%s reason=%s",
                card_name(node, index), actor, reason)  # fmt: skip


class Accelerators:
    """This machine's cards (see the module docstring); safe to call from any thread."""

    def __init__(self, settings: Settings, store: ModelStore) -> None:
        self._store = store
        self.ledger = CardLedger(
            nodes=parse_local_accelerators(settings.local_accelerators),
            resource_type=settings.local_resource_type,
            probation_s=settings.quarantine_probation_s,
        )
        self._lock = threading.Lock()
        self._loaded = False

    def load(self) -> None:
        """Read the stored quarantines (once): a restart keeps faulty cards out of service."""
        with self._lock:
            if self._loaded:
                return
            stored = self._store.quarantines()
            self.ledger.quarantines = {q.key: q for q in stored}
            self._loaded = True
        if stored:
            logger.info("quarantined cards restored cards=%s", [card_name(*q.key) for q in stored])

    # --- placement, for the local deployer ---------------------------------------------

    def place(
        self, resource_type: str, cards_per_pod: int, pods: int, holder: tuple[str, str, str]
    ) -> Placement | None:
        with self._lock:
            return self.ledger.place(resource_type, cards_per_pod, pods, holder)

    def release_instance(self, instance_id: str) -> None:
        with self._lock:
            self.ledger.release(instance_id)

    def shortage(self, resource_type: str, cards_per_pod: int, pods: int) -> str:
        with self._lock:
            return self.ledger.shortage(resource_type, cards_per_pod, pods)

    def probation(self, placement: Placement) -> list[tuple[str, int]]:
        """The cards of ``placement`` that are quarantined (so on probation)."""
        with self._lock:
            return [
                (n, i) for n, ix in placement.pods for i in ix if (n, i) in self.ledger.quarantines
            ]

    # --- quarantine and release --------------------------------------------------------

    def device_fault(self, card: tuple[str, int], reason: str, model: tuple[str, str]) -> None:
        """An engine on ``card`` failed with a device error: quarantine it (again)."""
        with self._lock:
            before = self.ledger.quarantines.get(card)
            faults = before.faults + 1 if before is not None else 1
            q = Quarantine(node=card[0], index=card[1], resource_type=self.ledger.resource_type,
                           reason=reason, by=BY_ENGINE, faults=faults)  # fmt: skip
            self.ledger.quarantines[card] = q
        self._keep(q, actor=BY_ENGINE, model=model)

    def quarantine(self, node: str, index: int, reason: str, actor: str) -> Quarantine:
        """An admin takes a card out of service; it stays until an admin releases it."""
        self._check(node, index)
        q = Quarantine(node=node, index=index, resource_type=self.ledger.resource_type,
                       reason=reason, by=actor, faults=2)  # fmt: skip
        with self._lock:
            self.ledger.quarantines[q.key] = q
        self._keep(q, actor=actor)
        return q

    def release(self, node: str, index: int, actor: str, reason: str = "") -> bool:
        """Give a card back; whether it was quarantined."""
        self._check(node, index)
        with self._lock:
            had = self.ledger.quarantines.pop((node, index), None)
        if had is None:
            return False
        record_release(self._store, node, index, actor, reason or "released")
        return True

    def state(self, node: str, index: int) -> str:
        with self._lock:
            return self.ledger.state(node, index).value

    def _keep(self, q: Quarantine, actor: str, model: tuple[str, str] = ("", "")) -> None:
        record_quarantine(self._store, q, actor, model)

    def _check(self, node: str, index: int) -> None:
        if not self.ledger.exists(node, index):
            raise AcceleratorNotFound(
                f"no card {card_name(node, index)} in the inventory", param="index"
            )

    # --- views -------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """Every card, with totals per resource type and per node."""
        with self._lock:
            cards = self.ledger.cards()
            totals = self.ledger.totals()
        per_node = {
            node: {state.value: totals[(node, state)] for state in CardState}
            for node in self.ledger.nodes
        }
        per_type = {
            state.value: sum(per_node[n][state.value] for n in per_node) for state in CardState
        }
        return {
            "totals": {self.ledger.resource_type: per_type},
            "nodes": [
                {"node": n, "resource_type": self.ledger.resource_type, **per_node[n]}
                for n in per_node
            ],
            "cards": cards,
        }


class InventoryCollector(Collector):
    """``aif_accelerators{node,resource_type,state}``: cards per node and state."""

    def __init__(self, accelerators: Inventory) -> None:
        self._accelerators = accelerators

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "aif_accelerators", "Accelerator cards by node and state",
            labels=["node", "resource_type", "state"],
        )  # fmt: skip
        try:
            view = self._accelerators.view()
        except StoreUnavailableError as exc:
            # A cluster that cannot be read now: no samples, rather than a failed scrape.
            logger.warning("accelerator inventory not read for /metrics: %s", exc.message)
            yield gauge
            return
        for node in view["nodes"]:
            for state in CardState:
                gauge.add_metric([node["node"], node["resource_type"], state.value],
                                 node[state.value])  # fmt: skip
        yield gauge


__all__ = [
    "Accelerators",
    "Inventory",
    "InventoryCollector",
    "record_quarantine",
    "record_release",
]
