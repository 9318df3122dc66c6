"""Requests for a model with no instance ready yet wait for one, instead of an immediate 503."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from domain.records import Endpoint, ModelStatus
from tests.chat_job_executor.conftest import model_record

CHAT = "/v1/chat/completions"


async def _ready_later(gw: Any, model_id: str, engine: Any, after_s: float) -> None:
    await asyncio.sleep(after_s)
    record = gw.store.get(model_id)
    record.endpoints = [Endpoint(instance_id="i1", url=engine.url)]
    record.status = ModelStatus.ACTIVE
    gw.store.replace(record)


async def test_a_request_for_a_starting_model_is_served_once_an_instance_is_ready(
    engines: Any, gateway: Any
) -> None:
    [engine] = await engines(1)
    gw = await gateway()
    starting = model_record("m", [], status=ModelStatus.DEPLOYING, replicas=1)
    stored = gw.store.create(starting)
    async with httpx.AsyncClient(timeout=10) as client:
        answer, _ = await asyncio.gather(
            client.post(gw.url + CHAT, json={"model": "m"}),
            _ready_later(gw, stored.id, engine, 0.5),
        )
    assert answer.status_code == 200
    assert answer.json()["served_by"] == engine.port


async def test_a_request_held_too_long_is_a_503_with_retry_after(
    engines: Any, gateway: Any
) -> None:
    gw = await gateway(hold_timeout_s=0.3)
    gw.store.create(model_record("m", [], status=ModelStatus.DEPLOYING, replicas=1,
                                 status_msg="0/1 instances ready"))  # fmt: skip
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(gw.url + CHAT, json={"model": "m"})
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    message = answer.json()["error"]["message"]
    assert "no instance ready after 0.3s" in message and "0/1 instances ready" in message


async def test_a_failed_model_is_a_503_at_once(gateway: Any) -> None:
    gw = await gateway()
    gw.store.create(model_record("m", [], status=ModelStatus.FAILED, status_msg="PVC missing"))
    async with httpx.AsyncClient(timeout=10) as client:
        started = asyncio.get_running_loop().time()
        answer = await client.post(gw.url + CHAT, json={"model": "m"})
    assert answer.status_code == 503
    assert asyncio.get_running_loop().time() - started < 1
    assert "FAILED and not serving: PVC missing" in answer.json()["error"]["message"]


async def test_a_model_scaled_to_zero_is_woken_by_a_request(engines: Any, gateway: Any) -> None:
    [engine] = await engines(1)
    gw = await gateway()
    idle = model_record("m", [], status=ModelStatus.IDLE, replicas=0, min_instance=0)
    stored = gw.store.create(idle)

    async def executor_starts_one() -> None:
        for _ in range(100):  # what the model-job-executor does once replicas > 0
            record = gw.store.get(stored.id)
            if record.replicas:
                break
            await asyncio.sleep(0.02)
        assert record.replicas == 1 and record.generation == stored.generation + 1
        assert record.status is ModelStatus.DEPLOYING
        await _ready_later(gw, stored.id, engine, 0.1)

    async with httpx.AsyncClient(timeout=10) as client:
        answer, _ = await asyncio.gather(
            client.post(gw.url + CHAT, json={"model": "m"}), executor_starts_one()
        )
        metrics = (await client.get(gw.url + "/metrics")).text
    assert answer.status_code == 200
    assert 'aif_requests_queued{model="m"} 0.0' in metrics
