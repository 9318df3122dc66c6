"""Admission control: capacity, a bounded wait queue with a deadline, then 429."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from api.app import Role
from api.chat_job_executor.admission import Gate
from api.errors import Overloaded
from api.store.sqlite import SqliteModelStore
from tests.chat_job_executor.conftest import model_record


async def test_a_request_waits_for_a_slot_and_gets_it_when_one_frees() -> None:
    gate = Gate()
    await gate.acquire(1, queue_limit=1, wait_s=5)
    waiting = asyncio.create_task(gate.acquire(1, queue_limit=1, wait_s=5))
    await asyncio.sleep(0.01)
    assert gate.queued == 1 and not waiting.done()
    gate.release(1)
    await asyncio.wait_for(waiting, 1)
    assert gate.in_flight == 1 and gate.queued == 0


async def test_a_full_queue_refuses_at_once_and_a_deadline_refuses_later() -> None:
    gate = Gate()
    await gate.acquire(1, queue_limit=1, wait_s=0.05)
    waiting = asyncio.create_task(gate.acquire(1, queue_limit=1, wait_s=0.05))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="1 more are waiting") as full:
        await gate.acquire(1, queue_limit=1, wait_s=0.05)
    assert full.value.headers == {"retry-after": "1"}
    with pytest.raises(Overloaded, match=r"no slot freed up within 0\.05s"):
        await waiting
    assert gate.in_flight == 1 and gate.queued == 0


async def test_a_waiter_cancelled_as_it_is_granted_hands_the_slot_on() -> None:
    gate = Gate()
    await gate.acquire(1, queue_limit=2, wait_s=5)
    first = asyncio.create_task(gate.acquire(1, queue_limit=2, wait_s=5))
    second = asyncio.create_task(gate.acquire(1, queue_limit=2, wait_s=5))
    await asyncio.sleep(0.01)
    gate.release(1)  # grants the first waiter ...
    first.cancel()  # ... which leaves before it runs
    await asyncio.wait_for(second, 1)
    assert first.cancelled()
    assert gate.in_flight == 1 and gate.queued == 0


async def test_past_capacity_and_queue_the_gateway_answers_429_promptly(
    engines: Any, gateway: Any
) -> None:
    [engine] = await engines(1, tokens=50, token_delay_s=0.02)
    gw = await gateway(max_in_flight_per_instance=2, admission_queue_per_instance=1,
                       admission_wait_s=0.2)  # fmt: skip
    gw.store.create(model_record("m", [engine]))
    body = {"model": "m", "messages": [], "stream": True}
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(client.post(gw.url + "/v1/chat/completions", json=body) for _ in range(6))
        )
        metrics = (await client.get(gw.url + "/metrics")).text
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 429, 429, 429, 429]  # 2 in flight; the waiter timed out too
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 'aif_requests_rejected_total{model="m",reason="overloaded"} 4.0' in metrics
    assert engine.requests == 2


async def test_each_chat_worker_admits_its_share_of_an_instance(engines: Any, gateway: Any) -> None:
    # Three processes serving the port admit ceil(5 / 3) = 2 each: 6 in all for 5 slots, not 15.
    [engine] = await engines(1, tokens=50, token_delay_s=0.02)
    gw = await gateway(max_in_flight_per_instance=5, admission_queue_per_instance=0,
                       admission_wait_s=0.05, chat_workers=3)  # fmt: skip
    gw.store.create(model_record("m", [engine]))
    body = {"model": "m", "messages": [], "stream": True}
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(client.post(gw.url + "/v1/chat/completions", json=body) for _ in range(4))
        )
    assert sorted(a.status_code for a in answers) == [200, 200, 429, 429]
    assert engine.requests == 2


async def test_requests_waiting_for_a_slot_have_the_scaler_decide_at_once(
    engines: Any, gateway: Any, store: SqliteModelStore
) -> None:
    # The gateway and the task-executor-manager in one process (as in `aif serve`), with a
    # pass interval far longer than the test: only the gateway's report can scale it up.
    [engine] = await engines(1, tokens=40, token_delay_s=0.05)
    stored = store.create(model_record("m", [engine], ready_instances=1, max_instance=4))
    gw = await gateway(
        frozenset({Role.CHAT_JOB_EXECUTOR, Role.TASK_EXECUTOR_MANAGER}),
        max_in_flight_per_instance=1, admission_queue_per_instance=10, admission_wait_s=10,
        scale_interval_s=600, scale_pressure_pass_s=0.05,
    )  # fmt: skip
    body = {"model": "m", "messages": [], "stream": True}
    async with httpx.AsyncClient(timeout=10) as client:
        first = asyncio.create_task(client.post(gw.url + "/v1/chat/completions", json=body))
        await asyncio.sleep(0.3)  # one in flight: the model is at capacity, nothing waits
        assert gw.store.get(stored.id).replicas == 1
        waiting = [
            asyncio.create_task(client.post(gw.url + "/v1/chat/completions", json=body))
            for _ in range(2)
        ]
        await asyncio.sleep(1.0)  # the streams take 2 s each: both still wait
        scaled = gw.store.get(stored.id)
        answers = await asyncio.gather(first, *waiting)
        metrics = (await client.get(gw.url + "/metrics")).text
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert scaled.replicas == 4  # 1 in flight + 2 waiting over 0.7 of a slot each, in bounds
    assert scaled.scaling.reason == "panic: scale up to the demand"
    assert scaled.scaling.inputs["queued"] == 2
    passes = re.search(r'^aif_scaler_pressure_passes_total\{model="m"\} (\S+)$', metrics, re.M)
    assert passes is not None and float(passes[1]) >= 1
