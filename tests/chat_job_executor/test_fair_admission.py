"""Fair admission: a saturated model's slots go to the keys waiting by weight and class."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from api.chat_job_executor.admission import Gate
from api.errors import Overloaded
from domain.keys import Flow

A = Flow("key_a")
B = Flow("key_b")


class Callers:
    """Requests waiting at one gate of capacity 1 whose slot is taken; ``served`` says who got
    each slot freed, in order."""

    def __init__(self, queue_limit: int = 100, wait_s: float = 60) -> None:
        self.gate = Gate()
        self.queue_limit = queue_limit
        self.wait_s = wait_s
        self.served: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.gate.acquire(1, self.queue_limit, self.wait_s)  # the slot, taken

    async def _call(self, flow: Flow, name: str, wait_s: float) -> None:
        await self.gate.acquire(1, self.queue_limit, wait_s, flow)
        self.served.append(name)

    async def arrive(self, flow: Flow, count: int = 1, wait_s: float | None = None) -> None:
        for _ in range(count):
            name = f"{flow.key_id}/{flow.priority}"
            self.tasks.append(asyncio.create_task(self._call(flow, name, wait_s or self.wait_s)))
            await asyncio.sleep(0)  # in the queue, in this order

    async def free(self, slots: int) -> list[str]:
        """Finish ``slots`` requests one after another; who took each slot."""
        before = len(self.served)
        for _ in range(slots):
            self.gate.release(1)
            for _ in range(3):
                await asyncio.sleep(0)
        return self.served[before:]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def callers() -> AsyncIterator[Callers]:
    waiting = Callers()
    await waiting.start()
    yield waiting
    await waiting.close()


async def test_slots_go_to_waiting_keys_in_proportion_to_their_weights(callers: Callers) -> None:
    heavy = Flow("key_a", weight=3)
    await callers.arrive(heavy, 12)  # first in line, all of them
    await callers.arrive(B, 12)
    served = await callers.free(8)
    assert served.count("key_a/interactive") == 6 and served.count("key_b/interactive") == 2
    served = await callers.free(8)
    assert served.count("key_a/interactive") == 6 and served.count("key_b/interactive") == 2


async def test_equal_keys_alternate_instead_of_one_waiting_behind_the_other(
    callers: Callers,
) -> None:
    await callers.arrive(A, 4)
    await callers.arrive(B, 4)
    assert await callers.free(4) == ["key_a/interactive", "key_b/interactive"] * 2


async def test_a_key_that_was_idle_banks_no_credit(callers: Callers) -> None:
    # A had the model to itself for ten slots; B, arriving, gets its share from then on,
    # not ten slots in a row.
    await callers.arrive(A, 14)
    assert await callers.free(10) == ["key_a/interactive"] * 10
    await callers.arrive(B, 4)
    assert await callers.free(4) == ["key_b/interactive", "key_a/interactive"] * 2


async def test_one_key_alone_is_served_in_arrival_order() -> None:
    gate = Gate()
    await gate.acquire(1, 10, 60)
    order: list[int] = []

    async def call(index: int) -> None:
        await gate.acquire(1, 10, 60, Flow("key_a", weight=2.5))
        order.append(index)

    tasks = []
    for index in range(6):
        tasks.append(asyncio.create_task(call(index)))
        await asyncio.sleep(0)
    for _ in range(6):
        gate.release(1)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]


async def test_interactive_requests_are_admitted_before_batch_ones(callers: Callers) -> None:
    await callers.arrive(Flow("key_a", priority="batch"), 3)
    await callers.arrive(B, 2)
    assert await callers.free(5) == ["key_b/interactive"] * 2 + ["key_a/batch"] * 3


async def test_a_request_lowered_to_batch_waits_behind_interactive_ones(
    callers: Callers,
) -> None:
    await callers.arrive(A.lowered("batch"), 2)
    await callers.arrive(B.lowered("interactive"), 1)  # cannot raise: stays interactive
    await callers.arrive(B.lowered(None), 1)
    assert await callers.free(4) == ["key_b/interactive"] * 2 + ["key_a/batch"] * 2


async def test_a_full_queue_makes_room_for_a_key_below_its_share() -> None:
    waiting = Callers(queue_limit=4)
    await waiting.start()
    await waiting.arrive(A, 4)  # the flood fills the queue
    await waiting.arrive(B)  # pushes out the flood's newest waiter ...
    with pytest.raises(Overloaded, match="gave its place to a key with less than its fair"):
        await waiting.tasks[3]
    await waiting.arrive(B)  # ... and again: two each now
    with pytest.raises(Overloaded, match="gave its place"):
        await waiting.tasks[2]
    with pytest.raises(Overloaded, match="4 more are waiting"):
        await waiting.gate.acquire(1, 4, 60, B)  # B holds its share: it is refused itself
    with pytest.raises(Overloaded, match="4 more are waiting"):
        await waiting.gate.acquire(1, 4, 60, A)
    assert waiting.gate.queued == 4
    served = await waiting.free(4)
    assert sorted(served) == ["key_a/interactive"] * 2 + ["key_b/interactive"] * 2
    await waiting.close()


async def test_a_full_queue_of_batch_requests_makes_room_for_an_interactive_one() -> None:
    waiting = Callers(queue_limit=2)
    await waiting.start()
    batch = Flow("key_a", weight=5, priority="batch")
    await waiting.arrive(batch, 2)
    await waiting.arrive(B)
    with pytest.raises(Overloaded, match="gave its place"):
        await waiting.tasks[1]
    with pytest.raises(Overloaded, match="2 more are waiting"):
        await waiting.gate.acquire(1, 2, 60, Flow("key_c", priority="batch"))
    assert await waiting.free(2) == ["key_b/interactive", "key_a/batch"]
    await waiting.close()


async def test_a_key_refused_for_a_full_queue_at_its_share_pushes_nobody_out() -> None:
    waiting = Callers(queue_limit=2)
    await waiting.start()
    await waiting.arrive(A)
    await waiting.arrive(B)
    with pytest.raises(Overloaded, match="2 more are waiting"):
        await waiting.gate.acquire(1, 2, 60, Flow("key_c"))
    assert await waiting.free(2) == ["key_a/interactive", "key_b/interactive"]
    await waiting.close()


async def test_a_waiter_that_leaves_or_times_out_hands_its_turn_on_uncharged(
    callers: Callers,
) -> None:
    await callers.arrive(A)  # leaves before a slot frees
    await callers.arrive(A, 1, wait_s=0.01)  # gives up
    await callers.arrive(A, 2)
    await callers.arrive(B, 2)
    callers.tasks[0].cancel()
    with pytest.raises(Overloaded, match=r"no slot freed up within 0\.01s"):
        await callers.tasks[1]
    # A's turn passes to its next waiter: A was not charged for the two that left.
    assert await callers.free(4) == ["key_a/interactive", "key_b/interactive"] * 2
    assert callers.gate.in_flight == 1 and callers.gate.queued == 0


async def test_a_waiter_cancelled_as_it_is_granted_hands_the_slot_to_the_next_in_share(
    callers: Callers,
) -> None:
    await callers.arrive(A, 2)
    await callers.arrive(B, 1)
    callers.gate.release(1)  # grants A's first ...
    callers.tasks[0].cancel()  # ... which leaves before it runs: the slot goes to B
    await asyncio.sleep(0.01)
    assert callers.served == ["key_b/interactive"]
    assert callers.gate.in_flight == 1 and callers.gate.queued == 1


async def test_more_capacity_admits_every_key_waiting_at_once(callers: Callers) -> None:
    await callers.arrive(A, 2)
    await callers.arrive(Flow("key_c", priority="batch"))
    await callers.arrive(B)
    callers.gate.wake(5)  # two more instances became ready
    await asyncio.sleep(0.01)
    assert sorted(callers.served) == sorted(
        ["key_a/interactive"] * 2 + ["key_b/interactive", "key_c/batch"]
    )
    assert callers.gate.in_flight == 5 and callers.gate.queued == 0
