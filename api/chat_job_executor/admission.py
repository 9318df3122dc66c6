"""Admission control: a model takes at most its capacity in flight; a short queue past it.

Each model has a :class:`Gate`. Its capacity is what its ready instances serve at once (an
engine's ``max-num-seqs``: past it, the engine queues inside and every request's latency
grows). Past capacity a request waits in a bounded FIFO queue, up to a deadline, and is
refused with 429 and ``Retry-After`` when the queue is full or the deadline passes: overload
becomes prompt refusals instead of every client's latency collapsing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass

from api.errors import Overloaded


@dataclass(frozen=True)
class AdmissionRule:
    # Requests that may wait per instance of the model once all are busy.
    queue_per_instance: int = 2
    # How long one may wait for a slot before it is refused.
    wait_s: float = 0.05


class Gate:
    """One model's slots in flight and its wait queue (one event loop; not thread-safe)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Requests held until the model has an instance ready at all (see the executor).
        self.held = 0

    @property
    def queued(self) -> int:
        """Requests waiting: for a slot, or for the model's first instance."""
        return len(self._waiters) + self.held

    def full(self, capacity: int) -> bool:
        """A request arriving now would wait: every slot is taken, or others wait already."""
        return self.in_flight >= capacity or bool(self._waiters)

    async def acquire(self, capacity: int, queue_limit: int, wait_s: float) -> None:
        """Take a slot, waiting for one when all ``capacity`` are taken; else Overloaded."""
        if not self.full(capacity):
            self.in_flight += 1
            return
        if len(self._waiters) >= queue_limit:
            raise Overloaded(
                f"the model is at capacity ({capacity} requests in flight) and {queue_limit} "
                "more are waiting; retry shortly",
                retry_after_s=wait_s,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        granted = False
        try:
            async with asyncio.timeout(wait_s):
                await waiter
            granted = True
        except TimeoutError:
            raise Overloaded(
                f"the model is at capacity ({capacity} requests in flight): no slot freed up "
                f"within {wait_s:g}s; retry shortly",
                retry_after_s=wait_s,
            ) from None
        finally:
            if granted:
                pass
            elif waiter.done() and not waiter.cancelled():
                self.release(capacity)  # granted as it timed out or was cancelled: hand it on
            else:
                waiter.cancel()
                self._remove(waiter)

    def _remove(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def release(self, capacity: int) -> None:
        self.in_flight -= 1
        self.wake(capacity)

    def wake(self, capacity: int) -> None:
        """Grant waiting requests the slots that are free (after a release, or more instances)."""
        while self._waiters and self.in_flight < capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)
