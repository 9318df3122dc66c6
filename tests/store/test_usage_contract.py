"""The usage half of the store contract, run against every store (see ``conftest.py``).

Buckets only grow: adding to one increments its counts, from any number of writers at once,
and a report reads them back by key, model and hour range, in hour order.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from domain.store import ModelStore
from domain.usage import UsageBucket, hour_of
from tests.store.conftest import StoreFactory

NOON = datetime(2026, 3, 1, 12, tzinfo=UTC)


def bucket(
    key: str = "key_a", model: str = "m1", hour: datetime = NOON, **counts: int
) -> UsageBucket:
    fields = {"requests": 1, "prompt_tokens": 3, "completion_tokens": 4, **counts}
    return UsageBucket(key_id=key, model=model, hour=hour, **fields)


def test_adding_to_a_bucket_increments_it(store: ModelStore) -> None:
    store.add_usage([bucket()])
    store.add_usage([bucket(requests=2, prompt_tokens=10, completion_tokens=20)])

    [stored] = store.usage()

    assert stored == bucket(requests=3, prompt_tokens=13, completion_tokens=24)
    assert stored.total_tokens == 37
    assert stored.hour == NOON and stored.hour.tzinfo is not None


def test_one_call_carries_many_buckets_and_a_report_filters_them(store: ModelStore) -> None:
    earlier = NOON - timedelta(hours=1)
    store.add_usage(
        [
            bucket("key_a", "m1", NOON),
            bucket("key_b", "m1", NOON),
            bucket("key_a", "m2", earlier),
            bucket("key_a", "m1", NOON + timedelta(hours=1)),
        ]
    )
    store.add_usage([])  # nothing to add is not an error

    every = store.usage()
    assert [(b.hour, b.key_id, b.model) for b in every] == [
        (earlier, "key_a", "m2"),
        (NOON, "key_a", "m1"),
        (NOON, "key_b", "m1"),
        (NOON + timedelta(hours=1), "key_a", "m1"),
    ]
    assert {b.key_id for b in store.usage(key_id="key_b")} == {"key_b"}
    assert [b.model for b in store.usage(model="m2")] == ["m2"]
    # From inclusive, until exclusive.
    window = store.usage(since=NOON, until=NOON + timedelta(hours=1))
    assert [(b.key_id, b.model) for b in window] == [("key_a", "m1"), ("key_b", "m1")]
    assert store.usage(key_id="key_a", model="m1", until=NOON) == []
    assert store.usage(key_id="key_nobody") == []


def test_usage_survives_reopening_and_is_seen_by_another_store(
    store_factory: StoreFactory,
) -> None:
    one, other = store_factory(), store_factory()
    one.add_usage([bucket()])
    other.add_usage([bucket()])
    one.close()

    reopened = store_factory()

    assert reopened.usage() == [bucket(requests=2, prompt_tokens=6, completion_tokens=8)]


def test_concurrent_writers_adding_to_one_bucket_lose_nothing(
    store_factory: StoreFactory, store_kind: str
) -> None:
    if store_kind == "mongomock":
        pytest.skip(
            "mongomock reads and writes an update in separate steps, so its $inc is not atomic"
            " across threads; the mongodb parameter checks the server's"
        )
    writers, rounds = 4, 25
    stores = [store_factory() for _ in range(writers)]
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(store: ModelStore) -> None:
        start.wait()
        try:
            for _ in range(rounds):
                store.add_usage([bucket(), bucket(model="m2")])
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    added = writers * rounds
    assert stores[0].usage() == [
        bucket(requests=added, prompt_tokens=3 * added, completion_tokens=4 * added),
        bucket(model="m2", requests=added, prompt_tokens=3 * added, completion_tokens=4 * added),
    ]


def test_hour_of_truncates_to_the_utc_hour() -> None:
    assert hour_of(datetime(2026, 3, 1, 12, 59, 59, 999, tzinfo=UTC)) == NOON
    assert hour_of(datetime(2026, 3, 1, 12, 30)) == NOON  # naive means UTC
