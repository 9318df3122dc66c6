"""The limits' counters half of the store contract, run against every store (see conftest):
atomic increments that return totals, seen by another store on the same data, and expiry."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from domain.store import ModelStore
from tests.store.conftest import StoreFactory

# Far ahead: a real MongoDB's TTL monitor removes what expired by its own clock, any time.
LATER = datetime(2101, 1, 1, tzinfo=UTC)


def test_adding_returns_the_totals_and_zero_reads(store: ModelStore) -> None:
    assert store.add_counters({"a": 2, "b": 0}, LATER) == {"a": 2, "b": 0}
    assert store.add_counters({"a": 3, "c": 1}, LATER) == {"a": 5, "c": 1}
    assert store.add_counters({"a": 0, "b": 0, "c": 0}, LATER) == {"a": 5, "b": 0, "c": 1}
    assert store.add_counters({}, LATER) == {}


def test_another_store_on_the_same_data_adds_to_the_same_counters(
    store_factory: StoreFactory,
) -> None:
    one, other = store_factory(), store_factory()
    one.add_counters({"a": 1}, LATER)
    assert other.add_counters({"a": 1}, LATER) == {"a": 2}


def test_concurrent_adds_lose_nothing(store_factory: StoreFactory) -> None:
    stores = [store_factory(), store_factory()]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: stores[i % 2].add_counters({"n": 1}, LATER), range(40)))
    assert stores[0].add_counters({"n": 0}, LATER) == {"n": 40}


def test_expired_counters_are_removed(store: ModelStore) -> None:
    now = datetime(2100, 3, 1, 12, tzinfo=UTC)
    store.add_counters({"old": 4}, now - timedelta(seconds=1))
    store.add_counters({"new": 4}, now + timedelta(seconds=1))

    assert store.expire_counters(now) == 1
    assert store.add_counters({"old": 0, "new": 0}, LATER) == {"old": 0, "new": 4}
