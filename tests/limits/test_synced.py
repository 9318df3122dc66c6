"""Limits counted through the store: two processes' counters (two store objects on one file)
share one count once synced, and a failing store is handled as AIF_LIMITS_UNREACHABLE says."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.errors import InsufficientQuota, RateLimited
from api.limits import KeyLimits, Outage, SyncedCounters
from api.store import SqliteModelStore
from domain.errors import StoreUnavailable

NOW_S = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
LIMITS = KeyLimits("key_1", "app", rpm=3, token_budget=100, budget_period="day")


class FlakyStore(SqliteModelStore):
    """A store whose counters can be made to fail, as a locked or unreachable one does."""

    failing = False

    def add_counters(self, deltas: dict[str, int], expires_at: datetime) -> dict[str, int]:
        if self.failing:
            raise StoreUnavailable("the model store is locked", retry_after_s=1.0)
        return super().add_counters(deltas, expires_at)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[list[FlakyStore]]:
    opened = [FlakyStore(tmp_path / "aif.db"), FlakyStore(tmp_path / "aif.db")]
    yield opened
    for store in opened:
        store.close()


def counters(store: FlakyStore, mode: str = "open") -> SyncedCounters:
    return SyncedCounters(store, Outage("store", mode), sync_s=0.5)  # type: ignore[arg-type]


async def test_two_processes_share_one_minute_once_synced(stores: list[FlakyStore]) -> None:
    one, two = counters(stores[0]), counters(stores[1])
    await one.admit(LIMITS, NOW_S)
    await two.admit(LIMITS, NOW_S)
    for each in (one, two, one):
        await each.sync()

    await one.admit(LIMITS, NOW_S + 1)  # the minute's third
    with pytest.raises(RateLimited):  # one knows of two's request
        await one.admit(LIMITS, NOW_S + 2)
    await one.sync()
    await two.sync()
    with pytest.raises(RateLimited):  # and two of one's
        await two.admit(LIMITS, NOW_S + 3)


async def test_budgets_add_up_across_processes(stores: list[FlakyStore]) -> None:
    one, two = counters(stores[0]), counters(stores[1])
    await one.charge(LIMITS, 60, NOW_S)
    await two.charge(LIMITS, 40, NOW_S)
    for each in (one, two, one):
        await each.sync()

    with pytest.raises(InsufficientQuota):
        await one.admit(LIMITS, NOW_S + 1)


async def test_a_failing_store_open_counts_here_and_catches_up(stores: list[FlakyStore]) -> None:
    one, two = counters(stores[0]), counters(stores[1])
    await two.admit(LIMITS, NOW_S)
    await two.sync()
    stores[0].failing = True
    for step in range(3):
        await one.admit(LIMITS, NOW_S + step)
    await one.sync()  # fails: the counts stay here
    with pytest.raises(RateLimited):  # this process's own counts still hold the limit
        await one.admit(LIMITS, NOW_S + 3)

    stores[0].failing = False
    await one.sync()
    await two.sync()
    with pytest.raises(RateLimited):  # what was counted during the outage reached the store
        await two.admit(LIMITS, NOW_S + 4)


async def test_a_failing_store_closed_refuses_limited_keys_until_it_answers(
    stores: list[FlakyStore],
) -> None:
    one = counters(stores[0], mode="closed")
    await one.admit(LIMITS, NOW_S)
    stores[0].failing = True
    await one.sync()

    with pytest.raises(RateLimited) as raised:
        await one.admit(LIMITS, NOW_S + 1)
    assert "cannot be checked" in raised.value.message and raised.value.status_code == 429
    stores[0].failing = False
    await one.sync()
    await one.admit(LIMITS, NOW_S + 2)
