"""Admission control: a model takes at most its capacity in flight; a short, fair queue past it.

Each model has a :class:`Gate`. Its capacity is what its ready instances serve at once (an
engine's ``max-num-seqs``: past it, the engine queues inside and every request's latency
grows). Past capacity a request waits in a bounded queue, up to a deadline, and is refused with
429 and ``Retry-After`` when the queue is full or the deadline passes: overload becomes prompt
refusals instead of every client's latency collapsing.

Who waits is shared fairly between flows (:class:`~domain.keys.Flow`: an API key, its weight
and its priority class), by start-time fair queuing: a flow's virtual time advances by
``1 / weight`` for each slot it is granted, a free slot goes to the waiting flow with the
least, and a flow that starts waiting again starts at the class's current virtual time, so an
idle flow banks no credit. Classes are strict: no batch request is granted a slot while an
interactive one waits. When the queue is full, a request from a flow that holds less of it
(per weight) than another pushes out that flow's newest waiter, which gets the 429 instead; a
batch waiter gives way to any interactive request. One flow alone is served first come, first
served. A slot is never idle while a request waits: a release and more capacity both grant.

What a flow is (the caller's key, ``x-priority``) is decided by the caller
(:mod:`api.routes.chat`); capacity and the queue's bound by the executor.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from api.errors import Overloaded
from domain.keys import SHARED_FLOW, Flow, KeyPriority

# Priority classes, granted strictly in this order.
CLASSES: tuple[KeyPriority, ...] = ("interactive", "batch")


@dataclass(frozen=True)
class AdmissionRule:
    # Requests that may wait per instance of the model once all are busy.
    queue_per_instance: int = 2
    # How long one may wait for a slot before it is refused.
    wait_s: float = 0.05
    # Waiters share by their flows' weights and classes; False: one FIFO for every flow.
    fair: bool = True


class _Backlog:
    """One flow's waiters in one class, oldest first, and where it stands in virtual time."""

    __slots__ = ("finish", "flow", "start", "waiters")

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        # Each waiter (its result: True granted, False pushed out) by its arrival number.
        self.waiters: dict[asyncio.Future[bool], int] = {}
        # The oldest waiter's start tag, and the virtual time after the last slot granted.
        self.start = 0.0
        self.finish = 0.0

    @property
    def held_per_weight(self) -> float:
        return len(self.waiters) / self.flow.weight


class _Class:
    """One priority class's flows and its virtual time (the start tag last granted)."""

    __slots__ = ("backlogs", "virtual_time", "waiting")

    def __init__(self) -> None:
        self.backlogs: dict[str, _Backlog] = {}
        self.virtual_time = 0.0
        self.waiting = 0

    def take(self, backlog: _Backlog, waiter: asyncio.Future[bool]) -> None:
        if backlog.waiters.pop(waiter, None) is not None:
            self.waiting -= 1

    def grant(self) -> asyncio.Future[bool] | None:
        """The next waiter by start tag (then arrival), its flow charged; None if none waits.

        A waiter cancelled but not yet gone is dropped uncharged. Flows that wait no more and
        are behind the class's virtual time are forgotten: one starting again would start at
        the virtual time anyway.
        """
        best: _Backlog | None = None
        best_tag = (0.0, 0)
        for key_id, backlog in list(self.backlogs.items()):
            while backlog.waiters and (head := next(iter(backlog.waiters))).done():
                self.take(backlog, head)
            if not backlog.waiters:
                if backlog.finish <= self.virtual_time:
                    del self.backlogs[key_id]
                continue
            tag = (backlog.start, next(iter(backlog.waiters.values())))
            if best is None or tag < best_tag:
                best, best_tag = backlog, tag
        if best is None:
            return None
        waiter = next(iter(best.waiters))
        self.take(best, waiter)
        self.virtual_time = best.start
        best.finish = best.start + 1 / best.flow.weight
        best.start = best.finish
        return waiter

    def heaviest(self, besides: str = "") -> _Backlog | None:
        """The flow holding the most of the queue per weight (but ``besides``)."""
        held = [b for k, b in self.backlogs.items() if b.waiters and k != besides]
        return max(held, key=lambda b: b.held_per_weight, default=None)


class Gate:
    """One model's slots in flight and its wait queue (one event loop; not thread-safe)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._classes = {name: _Class() for name in CLASSES}
        self._arrivals = itertools.count()
        # Requests held until the model has an instance ready at all (see the executor).
        self.held = 0

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(c.waiting for c in self._classes.values())

    @property
    def queued(self) -> int:
        """Requests waiting: for a slot, or for the model's first instance."""
        return self.waiting + self.held

    def full(self, capacity: int) -> bool:
        """A request arriving now would wait: every slot is taken, or others wait already."""
        return self.in_flight >= capacity or self.waiting > 0

    async def acquire(
        self, capacity: int, queue_limit: int, wait_s: float, flow: Flow = SHARED_FLOW
    ) -> None:
        """Take a slot, waiting for one when all ``capacity`` are taken; else Overloaded."""
        if not self.full(capacity):
            self.in_flight += 1
            return
        if self.waiting >= queue_limit and not self._push_out(flow):
            raise Overloaded(
                f"the model is at capacity ({capacity} requests in flight) and {queue_limit} "
                "more are waiting; retry shortly",
                retry_after_s=wait_s,
            )
        waiter = self._enqueue(flow)
        granted = False
        try:
            async with asyncio.timeout(wait_s):
                granted = await waiter
        except TimeoutError:
            raise Overloaded(
                f"the model is at capacity ({capacity} requests in flight): no slot freed up "
                f"within {wait_s:g}s; retry shortly",
                retry_after_s=wait_s,
            ) from None
        finally:
            if not waiter.done() or waiter.cancelled():
                waiter.cancel()
                self._leave(flow, waiter)
            elif waiter.result() and not granted:
                self.release(capacity)  # granted as it timed out or was cancelled: hand it on
        if not granted:
            raise Overloaded(
                f"the model is at capacity ({capacity} requests in flight) and its queue is "
                "full: this request gave its place to a key with less than its fair share of "
                "the queue; retry shortly",
                retry_after_s=wait_s,
            )

    def _enqueue(self, flow: Flow) -> asyncio.Future[bool]:
        queue = self._classes[flow.priority]
        backlog = queue.backlogs.get(flow.key_id)
        if backlog is None:
            backlog = queue.backlogs[flow.key_id] = _Backlog(flow)
        backlog.flow = flow  # the key's weight may have changed since
        if not backlog.waiters:
            backlog.start = max(backlog.finish, queue.virtual_time)  # no credit for idling
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        backlog.waiters[waiter] = next(self._arrivals)
        queue.waiting += 1
        return waiter

    def _leave(self, flow: Flow, waiter: asyncio.Future[bool]) -> None:
        queue = self._classes[flow.priority]
        backlog = queue.backlogs.get(flow.key_id)
        if backlog is not None:
            queue.take(backlog, waiter)

    def _push_out(self, flow: Flow) -> bool:
        """Make room in a full queue for ``flow`` by refusing someone else's newest waiter:
        a lower class's first, else one of a flow holding more of the queue per weight."""
        own = CLASSES.index(flow.priority)
        for lower in reversed(CLASSES[own + 1 :]):
            victim = self._classes[lower].heaviest()
            if victim is not None:
                self._refuse_newest(self._classes[lower], victim)
                return True
        queue = self._classes[flow.priority]
        mine = queue.backlogs.get(flow.key_id)
        after = (len(mine.waiters) if mine is not None else 0) + 1
        victim = queue.heaviest(besides=flow.key_id)
        if victim is None or after / flow.weight >= victim.held_per_weight:
            return False
        self._refuse_newest(queue, victim)
        return True

    @staticmethod
    def _refuse_newest(queue: _Class, victim: _Backlog) -> None:
        waiter = next(reversed(victim.waiters))
        queue.take(victim, waiter)
        if not waiter.done():
            waiter.set_result(False)

    def release(self, capacity: int) -> None:
        self.in_flight -= 1
        self.wake(capacity)

    def wake(self, capacity: int) -> None:
        """Grant waiting requests the slots that are free (after a release, or more instances)."""
        while self.in_flight < capacity:
            waiter = self._next()
            if waiter is None:
                return
            self.in_flight += 1
            waiter.set_result(True)

    def _next(self) -> asyncio.Future[bool] | None:
        for queue in self._classes.values():
            if queue.waiting:
                return queue.grant()
        return None
