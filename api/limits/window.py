"""What a key's limits mean: the trailing minute's slots, the budget's period, and a refusal.

Pure functions of the counts and ``now`` (seconds since the epoch, UTC), so each backend
(:mod:`api.limits.local`, :mod:`api.limits.redis_counters`, :mod:`api.limits.synced`) decides
alike and tests step a fake clock. Counting and sharing the counts is left to those backends.

* **rpm**: requests admitted are counted in one-second slots; a request is admitted while the
  slots of the trailing window hold fewer than ``rpm``. The window is the current slot and the
  :data:`WINDOW_S` before it, so no 60 s span ever holds more than ``rpm`` admitted requests
  (the cost: a request may wait up to one slot longer than a perfect window would make it).
* **tpm**: the tokens charged after each answer, in the same slots; a request is admitted
  while the window holds fewer than ``tpm``.
* **budget**: the tokens charged in the current UTC day or calendar month; past
  ``token_budget`` a request is refused until the period ends.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from api.errors import AifError, InsufficientQuota, RateLimited
from domain.keys import ApiKey, BudgetPeriod

# Slot length: the granularity of the window and of Retry-After.
SLOT_S = 1
WINDOW_S = 60
# The current slot and the 60 before it (see the module: never more than the limit in 60 s).
WINDOW_SLOTS = WINDOW_S // SLOT_S + 1
# Slot counters outlive their window by this much, so a slow reader never sees one vanish.
SLOT_TTL_S = WINDOW_SLOTS * SLOT_S + 60
# Budget counters are kept a day past their period, for whoever reads the usage late.
BUDGET_TTL_PAST_END = timedelta(days=1)


@dataclass(frozen=True)
class KeyLimits:
    """One key's limits, as its latest record says; counters are keyed by ``key_id``."""

    key_id: str
    name: str
    rpm: int | None = None
    tpm: int | None = None
    token_budget: int | None = None
    budget_period: BudgetPeriod = "month"

    @classmethod
    def of(cls, key: ApiKey) -> KeyLimits | None:
        """The key's limits, or None when it has none (its requests take no counter call)."""
        if not key.rpm and not key.tpm and not key.token_budget:
            return None
        return cls(key.id, key.name, key.rpm, key.tpm, key.token_budget, key.budget_period)


@dataclass(frozen=True)
class Period:
    """The budget period ``now`` falls in: its counter's label and its bounds."""

    label: str
    start: datetime
    end: datetime


def period_of(kind: BudgetPeriod, now_s: float) -> Period:
    now = datetime.fromtimestamp(now_s, UTC)
    if kind == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period(f"day:{start:%Y-%m-%d}", start, start + timedelta(days=1))
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else (
        start.replace(month=start.month + 1)
    )  # fmt: skip
    return Period(f"month:{start:%Y-%m}", start, end)


def slot_of(now_s: float) -> int:
    return math.floor(now_s / SLOT_S)


def window_slots(now_s: float) -> range:
    """The slots of the trailing window, oldest first; the current one last."""
    current = slot_of(now_s)
    return range(current - WINDOW_SLOTS + 1, current + 1)


def request_name(key_id: str, slot: int) -> str:
    return f"{key_id}:r:{slot}"


def token_name(key_id: str, slot: int) -> str:
    return f"{key_id}:t:{slot}"


def budget_name(key_id: str, period: Period) -> str:
    return f"{key_id}:b:{period.label}"


@dataclass(frozen=True)
class Names:
    """The counters one decision for a key reads, and those an admission or a charge adds to."""

    requests: list[str]
    tokens: list[str]
    budget: str | None
    period: Period

    @classmethod
    def of(cls, limits: KeyLimits, now_s: float) -> Names:
        return _names(limits, slot_of(now_s))

    @classmethod
    def _build(cls, limits: KeyLimits, slot: int) -> Names:
        slots = window_slots(slot * SLOT_S)
        # Periods start on whole seconds: one slot lies in one period.
        period = period_of(limits.budget_period, slot * SLOT_S)
        # Only what the key's limits need: a key with rpm alone reads no token counter.
        return cls(
            [request_name(limits.key_id, slot) for slot in slots] if limits.rpm else [],
            [token_name(limits.key_id, slot) for slot in slots] if limits.tpm else [],
            budget_name(limits.key_id, period) if limits.token_budget else None,
            period,
        )

    @property
    def every(self) -> list[str]:
        budget = [self.budget] if self.budget is not None else []
        return [*self.requests, *self.tokens, *budget]


@functools.lru_cache(maxsize=4096)
def _names(limits: KeyLimits, slot: int) -> Names:
    """Built once per key and slot: the hot path formats no names."""
    return Names._build(limits, slot)


@dataclass(frozen=True)
class Usage:
    """What a key used: per slot of the window (oldest first), and in the budget's period."""

    first_slot: int
    requests: list[int]
    tokens: list[int]
    budget_used: int

    @classmethod
    def read(cls, names: Names, now_s: float, count: Callable[[str], int]) -> Usage:
        return cls(
            window_slots(now_s).start,
            [count(name) for name in names.requests],
            [count(name) for name in names.tokens],
            count(names.budget) if names.budget is not None else 0,
        )


def _wait_s(counts: list[int], first_slot: int, limit: int, now_s: float) -> float:
    """Seconds until enough of the oldest slots leave the window for the total to be below
    ``limit``."""
    total = sum(counts)
    for offset, count in enumerate(counts):
        total -= count
        if total < limit:
            return (first_slot + offset + WINDOW_SLOTS) * SLOT_S - now_s
    return WINDOW_SLOTS * SLOT_S  # not reached: an empty window is below any limit


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def refusal(limits: KeyLimits, usage: Usage, now_s: float, period: Period) -> AifError | None:
    """Why the key's next request is refused, or None when it is admitted."""
    if limits.token_budget and usage.budget_used >= limits.token_budget:
        per = "day (UTC)" if limits.budget_period == "day" else "calendar month (UTC)"
        return InsufficientQuota(
            f"token budget of key {limits.name!r} used up: {usage.budget_used} of "
            f"{limits.token_budget} tokens this {per}; it resets at {_iso(period.end)}",
            retry_after_s=(period.end - datetime.fromtimestamp(now_s, UTC)).total_seconds(),
        )
    waits = []
    if limits.rpm and sum(usage.requests) >= limits.rpm:
        wait = _wait_s(usage.requests, usage.first_slot, limits.rpm, now_s)
        waits.append((wait, f"{limits.rpm} requests per minute"))
    if limits.tpm and sum(usage.tokens) >= limits.tpm:
        wait = _wait_s(usage.tokens, usage.first_slot, limits.tpm, now_s)
        waits.append((wait, f"{limits.tpm} tokens per minute"))
    if not waits:
        return None
    wait_s = max(w for w, _ in waits)
    return RateLimited(
        f"rate limit of key {limits.name!r} reached: "
        f"{' and '.join(what for _, what in waits)}; retry in {math.ceil(wait_s)}s",
        retry_after_s=wait_s,
    )


def budget_expiry(period: Period) -> datetime:
    return period.end + BUDGET_TTL_PAST_END
