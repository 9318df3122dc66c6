"""The one read-modify-write every writer uses: racing writers never lose an update."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from domain.records import ModelRecord
from domain.store import (
    MAX_WRITE_ATTEMPTS,
    ModelStore,
    WriteContention,
    remove,
    rewrite,
)
from tests.store.test_contract import make_record

WRITERS = 2
WRITES_PER_WRITER = 10


def test_two_racing_writers_lose_no_update(store: ModelStore) -> None:
    created = store.create(make_record())
    # Both writers read the same revision before either writes, on every round: one of the
    # two writes of each round must conflict, and only a re-read keeps its increment.
    both_read = threading.Barrier(WRITERS)

    def writer() -> int:
        conflicts = 0
        for _ in range(WRITES_PER_WRITER):
            first_try = True

            def bump(record: ModelRecord) -> ModelRecord:
                nonlocal first_try, conflicts
                if first_try:
                    first_try = False
                    both_read.wait(timeout=10)
                else:
                    conflicts += 1
                record.attempts += 1
                return record

            assert rewrite(store, created.id, bump) is not None
        return conflicts

    with ThreadPoolExecutor(WRITERS) as pool:
        conflicts = sum(pool.map(lambda _: writer(), range(WRITERS)))

    final = store.get(created.id)
    assert final is not None
    assert final.attempts == WRITERS * WRITES_PER_WRITER
    assert conflicts >= WRITES_PER_WRITER  # the race really happened, once per round


def test_nothing_to_write_leaves_the_record_as_it_was(store: ModelStore) -> None:
    created = store.create(make_record())
    result = rewrite(store, created.id, lambda record: None)
    assert result is not None
    record, written = result
    assert not written and record.revision == created.revision


def test_a_missing_record_is_none(store: ModelStore) -> None:
    assert rewrite(store, "0" * 32, lambda record: record) is None
    assert remove(store, "0" * 32) is None


class _AlwaysLosing:
    """A store whose every write loses the race, as under a writer that never stops."""

    def __init__(self, store: ModelStore) -> None:
        self._store = store
        self.writes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def replace(self, record: ModelRecord) -> ModelRecord:
        self.writes += 1
        bumped = record.model_copy(update={"attempts": record.attempts + 100})
        self._store.replace(bumped)  # the other writer wins
        return self._store.replace(record)  # so this write conflicts


def test_a_writer_that_always_loses_gives_up_after_the_bound(store: ModelStore) -> None:
    created = store.create(make_record())
    losing = _AlwaysLosing(store)

    def bump(record: ModelRecord) -> ModelRecord:
        record.replicas = 2
        return record

    with pytest.raises(WriteContention, match=f"{MAX_WRITE_ATTEMPTS} writes in a row"):
        rewrite(losing, created.id, bump)  # type: ignore[arg-type]
    assert losing.writes == MAX_WRITE_ATTEMPTS


def test_remove_deletes_whatever_the_revision(store: ModelStore) -> None:
    created = store.create(make_record())
    store.replace(created.model_copy(update={"replicas": 2}))
    removed = remove(store, created.id)
    assert removed is not None and removed.id == created.id
    assert store.get(created.id) is None
