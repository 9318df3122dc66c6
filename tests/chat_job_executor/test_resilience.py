"""Each way an instance fails, against real servers on loopback, and what the client sees."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from api.chat_job_executor import ChatJobExecutor
from tests.chat_job_executor.conftest import model_record

CHAT = "/v1/chat/completions"


def _stream_body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, **extra}


async def _stream(url: str, body: dict[str, Any]) -> tuple[httpx.Response, list[str]]:
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", url + CHAT, json=body) as response,
    ):
        lines = [line async for line in response.aiter_lines() if line]
    return response, lines


def _executor(gateway: Any) -> ChatJobExecutor:
    executor: ChatJobExecutor = gateway.state.inference
    return executor


async def test_a_whole_answer_passes_through_with_one_date_and_server_header(
    engines: Any, gateway: Any
) -> None:
    [engine] = await engines(1)
    gw = await gateway()
    gw.store.create(model_record("m", [engine]))
    body = {"model": "m", "messages": [], "extra_field": 1}
    async with httpx.AsyncClient() as client:
        response = await client.post(gw.url + CHAT, json=body)
    assert response.status_code == 200
    assert response.json()["echo"] == body  # the body passes through untouched
    assert len(response.headers.get_list("date")) == 1
    assert response.headers.get_list("server") == ["uvicorn"]


async def test_an_engines_bad_request_reads_as_the_gateways_own(engines: Any, gateway: Any) -> None:
    """vLLM's BadRequestError reaches the client as OpenAI's invalid_request_error."""
    [engine] = await engines(1, mode="400-vllm")
    gw = await gateway()
    gw.store.create(model_record("m", [engine]))
    async with httpx.AsyncClient() as client:
        relayed = await client.post(gw.url + CHAT, json={"model": "m", "max_tokens": -1})
        own = await client.post(gw.url + CHAT, content=b"{not json")
    assert relayed.status_code == 400
    assert relayed.headers["content-type"] == "application/json"
    assert relayed.json() == {
        "error": {
            "message": "max_tokens must be at least 1, got -1.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": 400,
        }
    }
    assert own.status_code == 400
    assert own.json()["error"]["type"] == relayed.json()["error"]["type"]


async def test_a_reset_before_the_first_byte_is_retried_on_another_instance(
    engines: Any, gateway: Any
) -> None:
    broken, healthy = await engines(2)
    broken.mode = "reset"
    gw = await gateway()
    gw.store.create(model_record("m", [broken, healthy]))
    for _ in range(4):
        response, lines = await _stream(gw.url, _stream_body())
        assert response.status_code == 200
        assert lines[-1] == "data: [DONE]"
    assert healthy.requests == 4


async def test_a_500_before_the_first_byte_is_retried_and_the_instance_ejected(
    engines: Any, gateway: Any
) -> None:
    broken, healthy = await engines(2)
    broken.mode = "500"
    gw = await gateway(ejection_failures=2, ejection_base_s=60)
    gw.store.create(model_record("m", [broken, healthy]))
    async with httpx.AsyncClient() as client:
        for _ in range(8):
            response = await client.post(gw.url + CHAT, json={"model": "m"})
            assert response.status_code == 200
            assert response.json()["served_by"] == healthy.port
        metrics = (await client.get(gw.url + "/metrics")).text
    assert broken.requests == 2  # then it left routing
    assert f'aif_instance_ejections_total{{instance="i{broken.port}",model="m"}} 1.0' in metrics
    assert f'aif_instance_ejected{{instance="i{broken.port}",model="m"}} 1.0' in metrics


async def test_an_ejected_instance_returns_after_its_ejection(engines: Any, gateway: Any) -> None:
    flaky, healthy = await engines(2)
    flaky.mode = "500"
    gw = await gateway(ejection_failures=1, ejection_base_s=0.3, routing_policy="round-robin")
    gw.store.create(model_record("m", [flaky, healthy]))
    async with httpx.AsyncClient() as client:
        assert (await client.post(gw.url + CHAT, json={"model": "m"})).status_code == 200
        assert (await client.post(gw.url + CHAT, json={"model": "m"})).status_code == 200
        asked = flaky.requests
        assert asked == 1
        flaky.mode = "ok"
        await asyncio.sleep(0.4)
        served = {
            (await client.post(gw.url + CHAT, json={"model": "m"})).json()["served_by"]
            for _ in range(4)
        }
    assert served == {flaky.port, healthy.port}


async def test_no_instance_able_to_serve_is_a_502_that_says_why(engines: Any, gateway: Any) -> None:
    first, second = await engines(2)
    first.mode, second.mode = "reset", "500"
    gw = await gateway()
    gw.store.create(model_record("m", [first, second]))
    async with httpx.AsyncClient() as client:
        response = await client.post(gw.url + CHAT, json={"model": "m"})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error" and error["code"] == 502
    assert f"i{second.port}: HTTP 500 " in error["message"]
    assert f"i{first.port}: " in error["message"]


async def test_every_instance_saturated_is_a_429_with_retry_after(
    engines: Any, gateway: Any
) -> None:
    [engine] = await engines(1, mode="429")
    gw = await gateway()
    gw.store.create(model_record("m", [engine]))
    async with httpx.AsyncClient() as client:
        response = await client.post(gw.url + CHAT, json={"model": "m"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "rate_limit_error"


async def test_an_instance_silent_before_the_first_byte_is_timed_out_and_skipped(
    engines: Any, gateway: Any
) -> None:
    stalled, healthy = await engines(2)
    stalled.mode = "stall-headers"
    gw = await gateway(upstream_first_byte_timeout_s=0.3, routing_policy="round-robin")
    gw.store.create(model_record("m", [stalled, healthy]))
    async with httpx.AsyncClient(timeout=10) as client:
        answers = [await client.post(gw.url + CHAT, json={"model": "m"}) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert stalled.requests == 1


async def test_a_stream_stalled_mid_answer_ends_with_an_error_event(
    engines: Any, gateway: Any
) -> None:
    [engine] = await engines(1, mode="stall-stream")
    gw = await gateway(upstream_idle_timeout_s=0.3)
    gw.store.create(model_record("m", [engine]))
    response, lines = await asyncio.wait_for(_stream(gw.url, _stream_body()), timeout=5)
    assert response.status_code == 200
    assert lines[0].startswith("data: ")
    assert lines[-2] == "event: error"
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["type"] == "upstream_error" and "stalled" in error["message"]
    assert "data: [DONE]" not in lines


async def test_an_instance_killed_mid_stream_ends_it_with_an_error_event(
    engines: Any, gateway: Any
) -> None:
    [engine] = await engines(1, mode="die-stream")
    gw = await gateway()
    gw.store.create(model_record("m", [engine]))
    response, lines = await _stream(gw.url, _stream_body())
    assert response.status_code == 200
    assert [line for line in lines if '"token"' in line] == [
        f'data: {{"port": {engine.port}, "token": {i}}}' for i in range(2)
    ]
    assert lines[-2] == "event: error" and "data: [DONE]" not in lines


async def test_a_client_that_leaves_mid_stream_stops_the_engine(engines: Any, gateway: Any) -> None:
    [engine] = await engines(1, tokens=200, token_delay_s=0.01)
    gw = await gateway()
    gw.store.create(model_record("m", [engine]))
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", gw.url + CHAT, json=_stream_body()) as response,
    ):
        async for _ in response.aiter_lines():
            break
    for _ in range(200):
        if engine.aborted:
            break
        await asyncio.sleep(0.01)
    assert engine.aborted == 1
    executor = _executor(gw)
    route = executor.table.lookup("m")
    assert route is not None and route.gate.in_flight == 0
    assert all(i.in_flight == 0 for i in route.instances)


async def _raw_exchange(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(-1), 10)  # until the server closes
    writer.close()
    return answer


async def test_an_http_1_0_client_gets_the_whole_stream_and_the_connection_closed(
    engines: Any, gateway: Any
) -> None:
    [engine] = await engines(1, tokens=5)
    gw = await gateway()
    gw.store.create(model_record("m", [engine]))
    body = json.dumps(_stream_body()).encode()
    request = (b"POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\ncontent-type: application/json"
               b"\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))  # fmt: skip
    answer = await _raw_exchange(gw.url, request)
    head, _, framed = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
    assert b"transfer-encoding: chunked" in head.lower()
    # Every chunk framed once, then the last chunk: de-chunked, the engine's events as sent.
    events, rest = _dechunk(framed)
    assert rest == b"" and events.count(b'"token"') == 5
    assert events.endswith(b"data: [DONE]\n\n")


def _dechunk(framed: bytes) -> tuple[bytes, bytes]:
    """The body of a chunked message, and what follows its last chunk."""
    body = b""
    while True:
        size_line, _, framed = framed.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert framed.startswith(b"\r\n")
            return body, framed[2:]
        body, framed = body + framed[:size], framed[size:]
        assert framed.startswith(b"\r\n")
        framed = framed[2:]
