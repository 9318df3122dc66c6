"""The accelerator inventory on a cluster: its nodes' cards, kept quarantines, fault isolation.

Under ``AIF_RUNTIME=kubernetes`` the cards are the nodes' (``status.capacity`` and
``status.allocatable``) and the pods' requests (:mod:`infra.node_inventory`); how slots,
quarantines and signals are told from them is :mod:`infra.node_quarantine`'s. A
:class:`ClusterAccelerators` reads the cluster and the stored quarantines at most every
``AIF_CLUSTER_INVENTORY_REFRESH_S``, however often the routes, the gauge or the deployer ask.

Every process that serves ``/v1/accelerators`` keeps one (the frontend reads nodes and pods
itself, with read-only grants); admins' quarantines and releases go to the store, where the
others read them at their next refresh. Only the model-job-executor's one *acts*: it
quarantines what the nodes say (cards dropped from ``allocatable``, nodes not Ready) and
releases what they no longer say, takes the deployer's device faults, and with
``AIF_TAINT_FAULTY_NODES`` keeps aif's ``NoSchedule`` taint on exactly the avoided nodes. Every
quarantine and release is stored, audited and logged as the local ones are
(:func:`api.accelerators.record_quarantine`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from api.accelerators import record_quarantine, record_release
from api.errors import AcceleratorNotFound, StoreUnavailableError
from domain.accelerators import BY_ENGINE, Quarantine, card_name, on_probation
from domain.records import utc_now
from domain.settings import Settings
from domain.store import ModelStore
from infra.manifests import label_value
from infra.node_inventory import ClusterCards, NodeReader
from infra.node_quarantine import (
    avoided_nodes,
    card_state,
    card_view,
    exists,
    fault_quarantine,
    node_signals,
)

logger = logging.getLogger(__name__)


class ClusterAccelerators:
    """A cluster's cards (see the module docstring); safe to call from any thread."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        reader: NodeReader,
        *,
        acts: bool,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._reader = reader
        self._acts = acts
        self._taints = acts and settings.taint_faulty_nodes
        self._refresh_s = settings.cluster_inventory_refresh_s
        self._probation_s = settings.quarantine_probation_s
        self._clock, self._now = clock, now
        self._lock = threading.Lock()
        self._cards = ClusterCards()
        self._quarantines: dict[tuple[str, int], Quarantine] = {}
        self._read_at = -math.inf
        # The last read's failure, answered again until the next read is due.
        self._error: StoreUnavailableError | None = None
        # When each node was last seen not Ready: its probation runs from there.
        self._not_ready_seen: dict[str, datetime] = {}

    async def start(self) -> None:
        """Nothing to start: the first read happens when something asks."""

    async def stop(self) -> None:
        self._reader.close()

    # --- reading ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the cluster and the stored quarantines unless read within the refresh
        interval; the executor's inventory then acts on what the nodes say."""
        with self._lock:
            if self._clock() - self._read_at < self._refresh_s:
                if self._error is not None:
                    raise self._error
                return
            self._read_at = self._clock()
            try:
                cards = self._reader.read()
            except Exception as exc:
                self._error = StoreUnavailableError(
                    f"cannot read the cluster's nodes: {exc}", retry_after_s=self._refresh_s
                )
                raise self._error from exc
            self._error = None
            self._cards = cards
            self._quarantines = {q.key: q for q in self._store.quarantines()}
        if self._acts:
            self._act()

    def view(self) -> dict[str, Any]:
        """Every node's cards (slots: see :mod:`infra.node_quarantine`), with totals."""
        self.refresh()
        names = {label_value(r.id): (r.id, r.name) for r in self._store.list()}
        with self._lock:
            return card_view(self._cards, list(self._quarantines.values()), names)

    def state(self, node: str, index: int) -> str:
        with self._lock:
            return card_state(self._cards, list(self._quarantines.values()), node, index)

    def avoided_nodes(self, resource_type: str) -> frozenset[str]:
        self.refresh()
        with self._lock:
            quarantines = list(self._quarantines.values())
        return avoided_nodes(quarantines, self._probation_s, self._now(), resource_type)

    # --- quarantine and release --------------------------------------------------------------

    def quarantine(self, node: str, index: int, reason: str, actor: str) -> Quarantine:
        """An admin takes a card, and so its node, out of aif's service until released."""
        self._check(node, index)
        with self._lock:
            found = next((n for n in self._cards.nodes if n.name == node), None)
            q = Quarantine(node=node, index=index, reason=reason, by=actor, faults=2,
                           resource_type=found.resource_type if found else "")  # fmt: skip
            self._quarantines[q.key] = q
        record_quarantine(self._store, q, actor)
        return q

    def release(self, node: str, index: int, actor: str, reason: str = "") -> bool:
        """Give a card back; whether it was quarantined."""
        self._check(node, index)
        with self._lock:
            had = self._quarantines.pop((node, index), None)
        if had is None:
            return False
        record_release(self._store, node, index, actor, reason or "released")
        return True

    def device_fault(
        self, node: str, device: int | None, reason: str, model: tuple[str, str]
    ) -> None:
        """A pod of ``model`` on ``node`` failed with a device error: quarantine a card."""
        with self._lock:
            found = next((n for n in self._cards.nodes if n.name == node), None)
            q = fault_quarantine(found, node, device, reason, self._quarantines)
            self._quarantines[q.key] = q
        record_quarantine(self._store, q, BY_ENGINE, model)

    def _check(self, node: str, index: int) -> None:
        self.refresh()
        with self._lock:
            known = exists(self._cards, list(self._quarantines.values()), node, index)
        if not known:
            raise AcceleratorNotFound(
                f"no card {card_name(node, index)} in the inventory", param="index"
            )

    # --- what the nodes say ------------------------------------------------------------------

    def _act(self) -> None:
        now = self._now()
        with self._lock:
            for node in self._cards.nodes:
                if not node.ready:
                    self._not_ready_seen[node.name] = now
            verdict = node_signals(self._cards, self._quarantines, self._probation_s, now,
                                   self._not_ready_seen)  # fmt: skip
            for q in verdict.quarantine:
                self._quarantines[q.key] = q
            for q, _ in verdict.release:
                self._quarantines.pop(q.key, None)
        for q in verdict.quarantine:
            record_quarantine(self._store, q, q.by)
        for q, why in verdict.release:
            record_release(self._store, q.node, q.index, q.by, why)
        if self._taints:
            self._keep_taints(now)

    def _keep_taints(self, now: datetime) -> None:
        """aif's taint on exactly the nodes it keeps its models off."""
        with self._lock:
            quarantines = list(self._quarantines.values())
            tainted = {n.name: n.tainted for n in self._cards.nodes}
        avoid = {q.node for q in quarantines if not on_probation(q, self._probation_s, now)}
        for node, has in sorted(tainted.items()):
            if has == (node in avoid):
                continue
            try:
                self._reader.set_taint(node, node in avoid)
            except Exception as exc:
                logger.warning("cannot %s node=%s: %s",
                               "taint" if node in avoid else "untaint", node, exc)  # fmt: skip
                continue
            logger.warning("node %s node=%s", "tainted" if node in avoid else "untainted", node)


__all__ = ["ClusterAccelerators"]
