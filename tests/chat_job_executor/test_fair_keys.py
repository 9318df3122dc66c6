"""Two keys on a saturated model, real servers on loopback: one key's flood fills the queue,
and the other's requests still get their share instead of 429s behind it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.chat_job_executor.conftest import Gateway, model_record
from tests.chat_job_executor.test_keys import ADMIN, bearer, make_key

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def flood_then(
    gw: Gateway, flood: dict[str, str], other: dict[str, str], others: int
) -> tuple[list[int], list[int], str]:
    """``flood`` sends 30 requests at once; once they fill the queue, ``other`` sends
    ``others``. Each one's status codes, and the gateway's metrics after."""
    async with httpx.AsyncClient(timeout=30) as client:
        url = gw.url + "/v1/chat/completions"
        flooding = [asyncio.create_task(client.post(url, json=BODY, headers=flood))
                    for _ in range(30)]  # fmt: skip
        for _ in range(500):
            metrics = (await client.get(gw.url + "/metrics")).text
            if 'aif_requests_queued{model="m"} 4.0' in metrics:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the flood never filled the queue")
        answers = await asyncio.gather(
            *(client.post(url, json=BODY, headers=other) for _ in range(others))
        )
        flooded = await asyncio.gather(*flooding)
        metrics = (await client.get(gw.url + "/metrics")).text
    return [a.status_code for a in flooded], [a.status_code for a in answers], metrics


@pytest.fixture
async def saturated(engines: Any, gateway: Any) -> Any:
    async def start(**settings: Any) -> Gateway:
        # 2 in flight and 4 waiting, long enough for every waiter to be served.
        [engine] = await engines(1, tokens=25, token_delay_s=0.02)
        gw: Gateway = await gateway(admin_key=ADMIN, max_in_flight_per_instance=2,
                                    admission_queue_per_instance=4, admission_wait_s=20,
                                    **settings)  # fmt: skip
        gw.store.create(model_record("m", [engine]))
        return gw

    return start


async def test_a_key_behind_another_keys_flood_gets_its_share(saturated: Any) -> None:
    gw = await saturated()
    flood, _ = make_key(gw, name="flood")
    other, _ = make_key(gw, name="other")
    flooded, answered, metrics = await flood_then(gw, bearer(flood), bearer(other), 3)
    # Two of the flood's waiters gave their places; the third request found the queue
    # shared equally and was refused.
    assert sorted(answered) == [200, 200, 429]
    assert flooded.count(200) == 2 + 2 and flooded.count(429) == 26
    assert 'aif_requests_overloaded_total{model="m",priority="interactive"} 27.0' in metrics


async def test_with_fair_queuing_off_the_flood_has_the_queue_to_itself(saturated: Any) -> None:
    gw = await saturated(admission_fair=False)
    flood, _ = make_key(gw, name="flood")
    other, _ = make_key(gw, name="other", weight=10)
    flooded, answered, _ = await flood_then(gw, bearer(flood), bearer(other), 3)
    assert answered == [429, 429, 429]
    assert flooded.count(200) == 6


async def test_a_batch_key_or_request_waits_behind_an_interactive_flood(saturated: Any) -> None:
    gw = await saturated()
    flood, _ = make_key(gw, name="flood")
    batch, _ = make_key(gw, name="nightly", priority="batch", weight=10)
    _, answered, metrics = await flood_then(gw, bearer(flood), bearer(batch), 1)
    assert answered == [429]  # a batch request never pushes an interactive one out
    lowered = {**bearer(flood), "x-priority": "batch"}
    _, answered, metrics = await flood_then(gw, bearer(flood), lowered, 1)
    assert answered == [429]
    assert 'aif_requests_overloaded_total{model="m",priority="batch"} 2.0' in metrics
