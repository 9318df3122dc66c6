"""Quarantined accelerator cards in every store: kept across a restart, replaced, released."""

from __future__ import annotations

from datetime import UTC, datetime

from domain.accelerators import Quarantine
from tests.store.conftest import StoreFactory

SINCE = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_quarantines_survive_a_restart(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert store.quarantines() == []
    first = Quarantine(node="node-b", index=3, resource_type="huawei.com/ascend-1980",
                       reason="device fault on NPU 3", since=SINCE)  # fmt: skip
    store.put_quarantine(first)
    store.put_quarantine(Quarantine(node="node-a", index=0, reason="admin", by="key_1"))

    reopened = store_factory()
    stored = {q.key: q for q in reopened.quarantines()}
    assert set(stored) == {("node-a", 0), ("node-b", 3)}
    assert stored[("node-b", 3)] == first
    assert stored[("node-a", 0)].by == "key_1"


def test_a_second_quarantine_replaces_the_first_and_release_removes_it(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    store.put_quarantine(Quarantine(node="n", index=1, reason="first"))
    store.put_quarantine(Quarantine(node="n", index=1, reason="again", faults=2))
    assert [(q.reason, q.faults) for q in store.quarantines()] == [("again", 2)]

    assert store.drop_quarantine("n", 1) is True
    assert store.drop_quarantine("n", 1) is False
    assert store_factory().quarantines() == []
