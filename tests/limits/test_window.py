"""What a key's limits mean, on a fake clock: a sliding minute for rpm and tpm, and a budget
per UTC day or calendar month that refuses with ``insufficient_quota`` until it resets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.errors import AifError, InsufficientQuota, RateLimited
from api.limits import KeyLimits, LocalCounters


def at(*moment: int) -> float:
    return datetime(*moment, tzinfo=UTC).timestamp()  # type: ignore[misc]


async def refused(counters: LocalCounters, limits: KeyLimits, now_s: float) -> AifError:
    with pytest.raises(AifError) as raised:
        await counters.admit(limits, now_s)
    return raised.value


async def test_rpm_admits_at_most_rpm_in_any_trailing_minute() -> None:
    counters, limits = LocalCounters(), KeyLimits("key_1", "app", rpm=3)
    start = at(2026, 3, 1, 12, 0, 0)
    for offset_s in (0, 10, 20):
        await counters.admit(limits, start + offset_s)

    error = await refused(counters, limits, start + 30)

    assert isinstance(error, RateLimited) and error.status_code == 429
    assert "3 requests per minute" in error.message
    # The first request leaves the window once its second is more than 60 s old.
    assert error.headers["retry-after"] == "31"
    await refused(counters, limits, start + 60.5)
    await counters.admit(limits, start + 61)
    await refused(counters, limits, start + 70.5)
    await counters.admit(limits, start + 71)


async def test_rpm_does_not_start_with_a_full_minute_to_spare() -> None:
    counters, limits = LocalCounters(), KeyLimits("key_1", "app", rpm=10)
    start = at(2026, 3, 1, 12, 0, 0)
    admitted = 0
    for step in range(120):  # two requests a second for a minute
        try:
            await counters.admit(limits, start + step / 2)
            admitted += 1
        except RateLimited:
            pass
    assert admitted == 10  # a bucket that starts full admits nearly twice that


async def test_tpm_counts_the_tokens_charged_in_the_trailing_minute() -> None:
    counters, limits = LocalCounters(), KeyLimits("key_1", "app", tpm=100)
    start = at(2026, 3, 1, 12, 0, 0)
    await counters.admit(limits, start)
    await counters.charge(limits, 60, start + 1)
    await counters.admit(limits, start + 2)  # 60 used: below 100
    await counters.charge(limits, 60, start + 20)

    error = await refused(counters, limits, start + 30)

    assert "100 tokens per minute" in error.message
    assert error.headers["retry-after"] == "32"  # the first 60 leave at start + 62
    await counters.admit(limits, start + 62)


async def test_a_budget_used_up_is_insufficient_quota_naming_the_reset_until_the_next_day() -> None:
    counters = LocalCounters()
    limits = KeyLimits("key_1", "app", token_budget=1000, budget_period="day")
    evening = at(2026, 3, 1, 23, 0, 0)
    await counters.admit(limits, evening)
    await counters.charge(limits, 1000, evening)

    error = await refused(counters, limits, at(2026, 3, 1, 23, 59, 59))

    assert isinstance(error, InsufficientQuota)
    body = error.body()["error"]
    assert (body["type"], body["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "1000 of 1000 tokens this day (UTC)" in body["message"]
    assert "resets at 2026-03-02T00:00:00Z" in body["message"]
    assert error.headers["retry-after"] == "1"
    await counters.admit(limits, at(2026, 3, 2, 0, 0, 0))


@pytest.mark.parametrize(
    ("used_at", "still_refused", "reset", "admitted_at"),
    [
        ((2026, 1, 31, 8), (2026, 1, 31, 23, 59), "2026-02-01T00:00:00Z", (2026, 2, 1)),
        ((2026, 12, 2), (2026, 12, 31, 23, 59), "2027-01-01T00:00:00Z", (2027, 1, 1)),
    ],
    ids=["month", "year-end"],
)
async def test_a_monthly_budget_resets_on_the_first_of_the_next_month(
    used_at: tuple[int, ...],
    still_refused: tuple[int, ...],
    reset: str,
    admitted_at: tuple[int, ...],
) -> None:
    counters = LocalCounters()
    limits = KeyLimits("key_1", "app", token_budget=500, budget_period="month")
    await counters.charge(limits, 800, at(*used_at))

    error = await refused(counters, limits, at(*still_refused))

    assert f"resets at {reset}" in error.message and "calendar month (UTC)" in error.message
    await counters.admit(limits, at(*admitted_at))


async def test_a_daily_budget_does_not_wait_for_the_month() -> None:
    counters = LocalCounters()
    limits = KeyLimits("key_1", "app", token_budget=500, budget_period="day")
    await counters.charge(limits, 500, at(2026, 1, 15, 10))
    await refused(counters, limits, at(2026, 1, 15, 23))
    await counters.admit(limits, at(2026, 1, 16))
