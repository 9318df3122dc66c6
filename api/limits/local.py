"""The :class:`Counters` seam, and its in-process implementation.

:class:`LocalCounters` counts in this process's memory only: exact for one process, and what
a process falls back to when the shared counter cannot be reached
(``AIF_LIMITS_UNREACHABLE=open``). Sharing the counts between processes is left to
:mod:`api.limits.redis_counters` and :mod:`api.limits.synced`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

from api.limits.window import (
    KeyLimits,
    Names,
    Usage,
    budget_name,
    refusal,
    request_name,
    slot_of,
    token_name,
    window_slots,
)

__all__ = ["Counters", "LocalCounters"]


class Counters(Protocol):
    """Where every gateway process counts keys' requests and tokens (see :mod:`api.limits`).

    ``now_s`` is wall-clock time (seconds since the epoch): the one time base every process
    shares. Neither method raises anything but :class:`~api.errors.AifError`.
    """

    async def admit(self, limits: KeyLimits, now_s: float) -> None:
        """Count one request of the key, or raise why it is refused (429, Retry-After)."""
        ...

    async def charge(self, limits: KeyLimits, tokens: int, now_s: float) -> None:
        """Add an answer's tokens to the key's minute and budget, once the answer ended."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def charged_names(limits: KeyLimits, now_s: float) -> list[str]:
    """The counters an answer's tokens are added to: the current slot and the budget."""
    names = [token_name(limits.key_id, slot_of(now_s))] if limits.tpm else []
    if limits.token_budget:
        names.append(budget_name(limits.key_id, Names.of(limits, now_s).period))
    return names


class LocalCounters:
    """:class:`Counters` in this process's memory (see the module)."""

    def __init__(self) -> None:
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._pruned_slot = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def check_and_count(self, limits: KeyLimits, now_s: float) -> None:
        """:meth:`admit`, without an await: the in-process decision itself."""
        self._prune(now_s)
        names = Names.of(limits, now_s)
        error = refusal(limits, Usage.read(names, now_s, self._count), now_s, names.period)
        if error is not None:
            raise error
        if limits.rpm:
            self._counts[request_name(limits.key_id, slot_of(now_s))] += 1

    async def admit(self, limits: KeyLimits, now_s: float) -> None:
        self.check_and_count(limits, now_s)

    async def charge(self, limits: KeyLimits, tokens: int, now_s: float) -> None:
        if tokens > 0:
            for name in charged_names(limits, now_s):
                self._counts[name] += tokens

    def _count(self, name: str) -> int:
        return self._counts.get(name, 0)

    def _prune(self, now_s: float) -> None:
        """Forget the slots that left the window (once a window, so it costs nothing per
        request); budgets are kept, a handful per key."""
        first = window_slots(now_s).start
        if first - self._pruned_slot < len(window_slots(now_s)):
            return
        self._pruned_slot = first
        for name in [n for n in self._counts if ":b:" not in n]:
            if int(name.rsplit(":", 1)[1]) < first:
                del self._counts[name]
