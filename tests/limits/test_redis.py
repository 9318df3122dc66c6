"""Limits counted in a real Redis: processes (here, counter objects with clients of their own)
share one exact count, and Redis going away is handled as AIF_LIMITS_UNREACHABLE says, with
no error but a 429, until it comes back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from api.errors import AifError, InsufficientQuota, RateLimited
from api.limits import KeyLimits, Outage, RedisCounters
from tests.conftest import RedisServer

# Ahead of the real clock: Redis expires a budget at its period's end by its own clock.
NOW_S = datetime(2100, 3, 1, 12, tzinfo=UTC).timestamp()
LIMITS = KeyLimits("key_1", "app", rpm=10, token_budget=100, budget_period="day")


def counters(server: RedisServer, mode: str = "open") -> RedisCounters:
    outage = Outage("redis", mode)  # type: ignore[arg-type]
    return RedisCounters.from_url(server.url, outage, timeout_s=0.5)


async def admitted(each: RedisCounters, limits: KeyLimits, now_s: float) -> bool:
    try:
        await each.admit(limits, now_s)
    except RateLimited:
        return False
    return True


async def test_processes_racing_for_the_last_requests_admit_exactly_rpm(
    redis_server: RedisServer,
) -> None:
    several = [counters(redis_server) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(admitted(several[i % 3], LIMITS, NOW_S + i / 100) for i in range(30))
        )
        assert sum(results) == 10
        with pytest.raises(RateLimited) as raised:
            await several[1].admit(LIMITS, NOW_S + 1)
        assert raised.value.headers["retry-after"] == "60"  # the first slot leaves at +61
        assert await admitted(several[2], LIMITS, NOW_S + 61)
    finally:
        for each in several:
            await each.stop()


async def test_budgets_add_up_across_processes(redis_server: RedisServer) -> None:
    one, two = counters(redis_server), counters(redis_server)
    try:
        await one.charge(LIMITS, 60, NOW_S)
        await two.charge(LIMITS, 40, NOW_S)
        with pytest.raises(InsufficientQuota) as raised:
            await one.admit(LIMITS, NOW_S + 1)
        assert "resets at 2100-03-02T00:00:00Z" in raised.value.message
    finally:
        await one.stop()
        await two.stop()


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_redis_going_away_is_never_an_error_and_counting_resumes(
    redis_server: RedisServer, mode: str
) -> None:
    each = counters(redis_server, mode)
    try:
        assert await admitted(each, LIMITS, NOW_S)
        redis_server.kill()
        answers = []
        for step in range(12):
            try:
                await each.admit(LIMITS, NOW_S + 1 + step / 100)
                answers.append("admitted")
            except RateLimited as refused:
                answers.append("cannot be checked" if "cannot be checked" in refused.message
                               else "limit")  # fmt: skip
            except AifError:
                answers.append("error")
        if mode == "open":
            # This process counts on its own: 10 of its own, then its own limit.
            assert answers == ["admitted"] * 10 + ["limit"] * 2
        else:
            assert answers == ["cannot be checked"] * 12

        redis_server.start()
        deadline = asyncio.get_running_loop().time() + 10
        while not await admitted(each, LIMITS, NOW_S + 2):  # after the back-off
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        # Redis' own count again (it restarted empty): 1 then 9 more.
        results = [await admitted(each, LIMITS, NOW_S + 3) for _ in range(10)]
        assert results == [True] * 9 + [False]
    finally:
        await each.stop()
