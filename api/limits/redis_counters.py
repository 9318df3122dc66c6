"""Keys' limits counted in Redis (``AIF_REDIS_URL``): exact across every gateway process.

Each admission is one call of a Lua script that reads the key's window slots and budget
counter, compares them with the limits and, when the request is admitted, adds it to the
current slot, all atomically: two processes never both take the last request of a minute.
An answer's tokens are added by one pipelined call. Counter names carry the key id in a hash
tag (``aif:{key_...}:r:<slot>``), so a key's counters sit on one Redis Cluster shard; slots
expire a minute after their window, budgets a day after their period.

Redis unreachable: a call that fails or takes longer than ``AIF_REDIS_TIMEOUT_S`` marks it down
for :data:`RETRY_S`; meanwhile requests are decided by :mod:`api.limits.outage`'s rule without
a call (a dead Redis is not asked on every request), then the next request tries it again. What
was counted locally in the outage is not added to Redis afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from api.errors import RateLimited
from api.limits.local import LocalCounters, charged_names
from api.limits.outage import Outage
from api.limits.window import (
    SLOT_TTL_S,
    KeyLimits,
    Names,
    Usage,
    budget_expiry,
    refusal,
    request_name,
    slot_of,
)

logger = logging.getLogger(__name__)

# After a failed call, Redis is left alone this long: a dead server costs one timeout a
# second, not one per request.
RETRY_S = 1.0

# KEYS: the request slots, the token slots, the budget counter (each group may be empty).
# ARGV: how many of each, then rpm, tpm, budget (0: none), the slot TTL in seconds.
# Returns {admitted (1/0), every count in KEYS' order}.
_CHECK_AND_ADD = """
local n_requests, n_tokens, n_budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local counts = {}
if #KEYS > 0 then
  local values = redis.call('MGET', unpack(KEYS))
  for i = 1, #KEYS do counts[i] = tonumber(values[i]) or 0 end
end
local requests, tokens, used = 0, 0, 0
for i = 1, n_requests do requests = requests + counts[i] end
for i = n_requests + 1, n_requests + n_tokens do tokens = tokens + counts[i] end
if n_budget > 0 then used = counts[n_requests + n_tokens + 1] end
local admitted = (rpm == 0 or requests < rpm) and (tpm == 0 or tokens < tpm)
  and (budget == 0 or used < budget)
if admitted and n_requests > 0 then
  redis.call('INCR', KEYS[n_requests])
  redis.call('EXPIRE', KEYS[n_requests], ARGV[7])
end
local answer = {admitted and 1 or 0}
for i = 1, #KEYS do answer[i + 1] = counts[i] end
return answer
"""

_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


def _redis_name(name: str) -> str:
    key_id, rest = name.split(":", 1)
    return f"aif:{{{key_id}}}:{rest}"


class RedisCounters:
    """:class:`~api.limits.local.Counters` in Redis (see the module)."""

    def __init__(
        self,
        client: aioredis.Redis,
        outage: Outage,
        *,
        timeout_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._script = client.register_script(_CHECK_AND_ADD)
        self._outage = outage
        self._timeout_s = timeout_s
        self._monotonic = monotonic
        self._down_until = 0.0
        self._fallback = LocalCounters()

    @classmethod
    def from_url(cls, url: str, outage: Outage, *, timeout_s: float) -> RedisCounters:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # No retries inside the client: the back-off here decides when to try again.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        return cls(client, outage, timeout_s=timeout_s)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self._client.aclose()

    async def admit(self, limits: KeyLimits, now_s: float) -> None:
        if self._monotonic() < self._down_until:
            return self._without_redis(limits, now_s)
        names = Names.of(limits, now_s)
        args = [len(names.requests), len(names.tokens), int(names.budget is not None),
                limits.rpm or 0, limits.tpm or 0, limits.token_budget or 0, SLOT_TTL_S]  # fmt: skip
        if names.requests:
            # The script adds to its last request key: the current slot.
            assert names.requests[-1] == request_name(limits.key_id, slot_of(now_s))
        try:
            answer = await self._call(
                self._script(keys=[_redis_name(n) for n in names.every], args=args)
            )
        except _REDIS_FAILURES as exc:
            self._failed(exc)
            return self._without_redis(limits, now_s)
        self._outage.up()
        if answer[0] == 1:
            return None
        counts = dict(zip(names.every, (int(c) for c in answer[1:]), strict=True))
        usage = Usage.read(names, now_s, lambda name: counts.get(name, 0))
        raise refusal(limits, usage, now_s, names.period) or RateLimited(
            f"rate limit of key {limits.name!r} reached; retry in 1s", retry_after_s=1.0
        )

    async def charge(self, limits: KeyLimits, tokens: int, now_s: float) -> None:
        if tokens <= 0:
            return
        if self._monotonic() < self._down_until:
            await self._fallback.charge(limits, tokens, now_s)
            return
        names = charged_names(limits, now_s)
        expiry = int(budget_expiry(Names.of(limits, now_s).period).timestamp())
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.incrby(_redis_name(name), tokens)
            if ":b:" in name:
                pipe.expireat(_redis_name(name), expiry)
            else:
                pipe.expire(_redis_name(name), SLOT_TTL_S)
        try:
            await self._call(pipe.execute())
        except _REDIS_FAILURES as exc:
            self._failed(exc)
            await self._fallback.charge(limits, tokens, now_s)

    async def _call(self, call: Any) -> Any:
        # The socket timeout bounds each read; this bounds the whole call, connecting included.
        return await asyncio.wait_for(call, self._timeout_s)

    def _failed(self, exc: BaseException) -> None:
        self._down_until = self._monotonic() + RETRY_S
        self._outage.down(exc)

    def _without_redis(self, limits: KeyLimits, now_s: float) -> None:
        if self._outage.mode == "closed":
            raise self._outage.refused(limits.name)
        self._fallback.check_and_count(limits, now_s)
