"""Keys' limits counted in the store, which every process shares already (no Redis).

No request writes the store: each process decides from the totals it last read from the
store plus what it counted itself since, and a background task adds its counts to the store's
counters (:meth:`~domain.store.ModelStore.add_counters`, atomic increments that return the
totals) every ``AIF_LIMITS_SYNC_S``, reading every other process's counts back in the same
call. Accuracy: a key can get, beyond its limit, what the *other* processes admit for it in
one sync interval (they have not told the store yet); with one process, or traffic slower than
one request per key per interval, the limit is exact. A key first seen by a process is synced
at once, and decided on that process's own counts until then.

The store failing (or a sync taking longer than :data:`STALE_SYNCS` intervals) is an outage
(:mod:`api.limits.outage`): ``open`` keeps deciding on the last totals plus this process's own
counts, which reach the store once it answers again; ``closed`` refuses limited keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from api.limits.local import charged_names
from api.limits.outage import Outage
from api.limits.window import (
    SLOT_S,
    SLOT_TTL_S,
    KeyLimits,
    Names,
    Usage,
    budget_expiry,
    refusal,
    request_name,
    slot_of,
)
from domain.store import ModelStore

logger = logging.getLogger(__name__)

# A sync this many intervals overdue (the store hangs) is an outage too.
STALE_SYNCS = 10
# A key unused this long is no longer synced, so idle keys cost the store nothing.
IDLE_KEY_S = 600.0
# Expired counters are removed this often; none is read once expired.
EXPIRE_EVERY_S = 60.0


@dataclass
class _Watched:
    limits: KeyLimits
    used_s: float


class SyncedCounters:
    """:class:`~api.limits.local.Counters` over the store, synced in the background."""

    def __init__(
        self,
        store: ModelStore,
        outage: Outage,
        *,
        sync_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._outage = outage
        self._sync_s = sync_s
        self._monotonic = monotonic
        # The totals the store gave at the last sync (this process's synced counts included).
        self._shared: dict[str, int] = {}
        # Counted here and being added to the store now, then what was counted since: both
        # are part of every decision until the store's totals include them.
        self._sending: dict[str, int] = {}
        self._pending: defaultdict[str, int] = defaultdict(int)
        self._watched: dict[str, _Watched] = {}
        # The callers' clock, as last seen: the sync names the same slots they do.
        self._seen_s = (0.0, monotonic())
        self._synced_at = monotonic()
        self._expired_at = 0.0
        self._wake = asyncio.Event()
        self._syncing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="limits-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # What this process counted last still reaches the store (best effort).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sync(), timeout=max(1.0, self._sync_s))

    # --- the hot path: memory only ------------------------------------------------------------

    def _count(self, name: str) -> int:
        return self._shared.get(name, 0) + self._sending.get(name, 0) + self._pending.get(name, 0)

    def _watch(self, limits: KeyLimits, now_s: float) -> None:
        self._seen_s = (now_s, self._monotonic())
        if limits.key_id not in self._watched:
            self._wake.set()  # a new key: its totals are read at once, not in an interval
        self._watched[limits.key_id] = _Watched(limits, now_s)

    async def admit(self, limits: KeyLimits, now_s: float) -> None:
        self._watch(limits, now_s)
        stale = self._monotonic() - self._synced_at > STALE_SYNCS * self._sync_s
        if stale and self._outage.reachable:
            self._outage.down(TimeoutError(f"no sync for {STALE_SYNCS} intervals"))
        if not self._outage.reachable and self._outage.mode == "closed":
            raise self._outage.refused(limits.name)
        names = Names.of(limits, now_s)
        error = refusal(limits, Usage.read(names, now_s, self._count), now_s, names.period)
        if error is not None:
            raise error
        if limits.rpm:
            self._pending[request_name(limits.key_id, slot_of(now_s))] += 1

    async def charge(self, limits: KeyLimits, tokens: int, now_s: float) -> None:
        self._watch(limits, now_s)
        if tokens > 0:
            for name in charged_names(limits, now_s):
                self._pending[name] += tokens

    # --- the background sync ------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sync_s)
            self._wake.clear()
            await self.sync()

    def _now_s(self) -> float:
        seen_s, at = self._seen_s
        return seen_s + (self._monotonic() - at)

    async def sync(self) -> None:
        """Add this process's counts to the store's and read every watched key's totals."""
        async with self._syncing:  # one at a time: the loop's, or stop()'s after it
            await self._sync()

    async def _sync(self) -> None:
        now_s = self._now_s()
        for key_id in [k for k, w in self._watched.items() if now_s - w.used_s > IDLE_KEY_S]:
            del self._watched[key_id]
        slots: dict[str, int] = {}
        budgets: dict[str, int] = {}
        ends: list[datetime] = []
        # Slots a little past this process's clock are read too: another process's clock may
        # be ahead of it, and decisions until the next sync read slots past "now".
        ahead_s = SLOT_S + 2 * self._sync_s
        for watched in self._watched.values():
            for names in (
                Names.of(watched.limits, now_s),
                Names.of(watched.limits, now_s + ahead_s),
            ):
                slots.update({name: 0 for name in [*names.requests, *names.tokens]})
                if names.budget is not None:
                    budgets[names.budget] = 0
                    ends.append(budget_expiry(names.period))
        self._sending, self._pending = dict(self._pending), defaultdict(int)
        for name, delta in self._sending.items():
            if ":b:" in name:
                budgets[name] = delta
            elif name in slots:
                slots[name] = delta
            # else: a slot that left the window, which no decision reads any more
        now = datetime.fromtimestamp(now_s, UTC)
        batches = [
            (slots, now + timedelta(seconds=SLOT_TTL_S)),
            (budgets, max(ends, default=now + timedelta(days=32))),
        ]
        totals: dict[str, int] = {}
        try:
            for batch, expires in batches:
                if batch:
                    added = await asyncio.to_thread(self._store.add_counters, batch, expires)
                    totals.update(added)
                    self._shared.update(added)
                    for name in batch:  # in the store's totals now
                        self._sending.pop(name, None)
            if self._monotonic() - self._expired_at > EXPIRE_EVERY_S:
                await asyncio.to_thread(self._store.expire_counters, now)
                self._expired_at = self._monotonic()
        except Exception as exc:
            for name, delta in self._sending.items():
                self._pending[name] += delta
            self._sending = {}
            self._outage.down(exc)
            return
        self._shared = totals
        self._sending = {}
        self._synced_at = self._monotonic()
        self._outage.up()
