"""The usage recorder: requests counted in memory, written to the store in batches, never lost.

The store is the real SQLite one, made to count its writes and, when asked, to fail them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.store.sqlite import SqliteModelStore
from api.usage import UsageRecorder
from domain.errors import StoreUnavailable
from domain.usage import UsageBucket

# 2026-03-01 12:30 UTC, as the recorder's clock reads it.
HALF_PAST_NOON_S = datetime(2026, 3, 1, 12, 30, tzinfo=UTC).timestamp()
NOON = datetime(2026, 3, 1, 12, tzinfo=UTC)


class FlakyStore(SqliteModelStore):
    """Counts ``add_usage`` calls; refuses them while ``down``."""

    writes = 0
    down = False

    def add_usage(self, buckets: list[UsageBucket]) -> None:
        if self.down:
            raise StoreUnavailable("the model store is locked", retry_after_s=1.0)
        self.writes += 1
        super().add_usage(buckets)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FlakyStore]:
    s = FlakyStore(tmp_path / "aif.db")
    yield s
    s.close()


def recorder(store: FlakyStore, flush_s: float = 3600) -> UsageRecorder:
    return UsageRecorder(store, flush_s=flush_s, clock=lambda: HALF_PAST_NOON_S)


def bucket(key: str, model: str, requests: int, prompt: int, completion: int) -> UsageBucket:
    return UsageBucket(
        key_id=key, model=model, hour=NOON, requests=requests, prompt_tokens=prompt,
        completion_tokens=completion,
    )  # fmt: skip


async def test_many_requests_are_one_write_per_flush(store: FlakyStore) -> None:
    usage = recorder(store)
    for _ in range(50):
        usage.record("key_a", "m1", 3, 4)
    usage.record("key_b", "m1", 10, 1)

    assert store.usage() == []  # recording writes nothing
    assert await usage.flush()
    assert await usage.flush()  # nothing new: no write

    assert store.writes == 1
    assert store.usage() == [bucket("key_a", "m1", 50, 150, 200), bucket("key_b", "m1", 1, 10, 1)]


async def test_a_failing_store_loses_nothing_and_is_logged_once(
    store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    usage = recorder(store)
    store.down = True
    usage.record("key_a", "m1", 3, 4)
    assert not await usage.flush()
    usage.record("key_a", "m1", 3, 4)
    assert not await usage.flush()

    store.down = False
    usage.record("key_a", "m1", 3, 4)
    assert await usage.flush()

    assert store.usage() == [bucket("key_a", "m1", 3, 9, 12)]
    failures = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1 and "kept for the next flush" in failures[0].getMessage()


async def test_the_task_flushes_on_its_own_and_stop_flushes_the_rest(store: FlakyStore) -> None:
    usage = recorder(store, flush_s=0.05)
    await usage.start()
    usage.record("key_a", "m1", 3, 4)
    for _ in range(200):
        if store.writes:
            break
        await asyncio.sleep(0.01)
    assert store.usage() == [bucket("key_a", "m1", 1, 3, 4)]

    usage.record("key_a", "m1", 3, 4)
    await usage.stop()

    assert store.usage() == [bucket("key_a", "m1", 2, 6, 8)]
