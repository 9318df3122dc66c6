"""aif's own upstream client (api.upstream) against engines on loopback that frame their answers
as the test says: kept-alive connections, the engine's bytes passed through, flow control."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from domain.records import ModelRecord
from domain.store import rewrite
from tests.chat_job_executor.conftest import LoopbackEngine, model_record

CHAT = "/v1/chat/completions"
STREAM = {"model": "m", "messages": [], "stream": True}
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)

# Answers one request on a connection: (the connection's request index from 0, reader, writer);
# False when the connection is done.
Script = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class RawEngine(LoopbackEngine):
    """An engine whose answers are the bytes a script writes."""

    script: Script
    connections: int = 0
    requests: int = 0

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._track(writer)
        index = 0
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                if not await self.script(index, reader, writer):
                    break
                index += 1
        writer.close()


@pytest.fixture
async def raw_engine() -> AsyncIterator[Callable[[Script], Awaitable[RawEngine]]]:
    started: list[RawEngine] = []

    async def start(script: Script) -> RawEngine:
        engine = RawEngine(script)
        await engine.start()
        started.append(engine)
        return engine

    yield start
    for engine in started:
        await engine.stop()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


async def _sse(_: int, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(SSE_HEAD + _chunk(b'data: {"token": 0}\n\n'))
    await writer.drain()
    writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()
    return True


async def _raw_exchange(port: int, version: bytes, body: dict[str, Any]) -> tuple[bytes, bytes]:
    """One request on a socket of its own: the answer's head and its body bytes as sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(
        b"POST %b %b\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%b"
        % (CHAT.encode(), version, len(data), data)
    )
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    return head, rest


async def test_requests_in_turn_share_one_kept_alive_connection(
    raw_engine: Any, gateway: Any
) -> None:
    engine = await raw_engine(_sse)
    gw = await gateway()
    gw.store.create(model_record("m", [engine]))
    async with httpx.AsyncClient() as client:
        for _ in range(5):
            response = await client.post(gw.url + CHAT, json=STREAM)
            assert response.text.endswith("data: [DONE]\n\n")
    assert engine.requests == 5
    assert engine.connections == 1


async def test_a_pooled_connection_the_engine_closes_is_retried_on_a_fresh_one(
    raw_engine: Any, gateway: Any
) -> None:
    """An engine that closes a kept-alive connection as it is reused (its keep-alive ran out
    as the request came): the one instance still answers, with no error and no ejection."""

    async def once_per_connection(
        index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if index > 0:
            writer.transport.abort()  # closed before any byte of the answer
            return False
        return await _sse(index, reader, writer)

    engine = await raw_engine(once_per_connection)
    gw = await gateway(ejection_failures=1)
    gw.store.create(model_record("m", [engine]))
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            response = await client.post(gw.url + CHAT, json=STREAM)
            assert response.status_code == 200
            assert response.text.endswith("data: [DONE]\n\n")
        metrics = (await client.get(gw.url + "/metrics")).text
    # After the first, each request was sent on its pooled connection (closed), then on a new one.
    assert (engine.requests, engine.connections) == (5, 3)
    assert f'aif_instance_ejections_total{{instance="i{engine.port}",model="m"}}' not in metrics


async def test_the_engines_chunks_reach_a_11_client_byte_for_byte(
    raw_engine: Any, gateway: Any
) -> None:
    """One chunk the engine writes in two parts reaches the client as the engine framed it."""
    first = _chunk(b'data: {"token": 0}\n\ndata: {"token": 1}\n\n')
    last = _chunk(b'data: {"usage": {"completion_tokens": 2}}\n\n') + _chunk(b"data: [DONE]\n\n")

    async def split(_: int, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(SSE_HEAD + first[:20])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(first[20:])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(last + b"0\r\n\r\n")
        await writer.drain()
        return True

    engine = await raw_engine(split)
    gw = await gateway()
    gw.store.create(model_record("m", [engine]))
    port = int(gw.url.rsplit(":", 1)[1])
    head, body = await _raw_exchange(port, b"HTTP/1.1", STREAM)
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == first + last + b"0\r\n\r\n"


async def test_a_content_length_stream_is_relayed_and_counted(
    raw_engine: Any, gateway: Any
) -> None:
    events = b'data: {"token": 0}\n\ndata: {"usage": {"completion_tokens": 7}}\n\ndata: [DONE]\n\n'

    async def sized(_: int, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n"
            % len(events)
        )
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(events)
        await writer.drain()
        return True

    engine = await raw_engine(sized)
    gw = await gateway()
    gw.store.create(model_record("m", [engine]))
    async with httpx.AsyncClient() as client:
        for _ in range(2):
            response = await client.post(gw.url + CHAT, json=STREAM)
            assert response.status_code == 200
            assert response.content == events
        metrics = (await client.get(gw.url + "/metrics")).text
    assert engine.connections == 1
    assert 'aif_time_to_first_token_seconds_count{model="m"} 2.0' in metrics


async def test_a_slow_client_pauses_the_engine_and_gets_every_byte(
    raw_engine: Any, gateway: Any
) -> None:
    """While the client reads nothing, the gateway stops reading the engine (whose writes
    then block) instead of holding the answer in memory; once it reads, everything comes."""
    piece = b"data: " + b"x" * 65_000 + b"\n\n"
    total = 400  # 26 MB: far more than the sockets' buffers hold
    sent: list[int] = [0]

    async def flood(_: int, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(SSE_HEAD)
        for _ in range(total):
            writer.write(_chunk(piece))
            await writer.drain()
            sent[0] += 1
        writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return True

    engine = await raw_engine(flood)
    gw = await gateway(upstream_idle_timeout_s=30)
    gw.store.create(model_record("m", [engine]))
    port = int(gw.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**16)
    data = json.dumps(STREAM).encode()
    writer.write(
        b"POST %b HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (CHAT.encode(), len(data), data)
    )
    await reader.readuntil(b"\r\n\r\n")
    writer.transport.pause_reading()  # the client stops reading
    await asyncio.sleep(1.0)
    held_back = sent[0]
    writer.transport.resume_reading()
    received = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    assert held_back < total // 2
    assert received.count(b"data: x") == total
    assert received.endswith(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def test_an_instance_that_leaves_routing_keeps_no_connection_from_the_gateway(
    raw_engine: Any, gateway: Any
) -> None:
    """Once an instance is out of the model's endpoints (scaled in, being drained), the
    gateway's kept-alive connections to it close at the next refresh, and one whose request was
    in flight closes when its answer ends: nothing holds the drain for a keep-alive."""
    release = asyncio.Event()

    async def held(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if index == 0:
            return await _sse(index, reader, writer)
        writer.write(SSE_HEAD + _chunk(b'data: {"token": 0}\n\n'))
        await writer.drain()
        await release.wait()
        writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return True

    kept, in_flight = await raw_engine(_sse), await raw_engine(held)
    gw = await gateway(upstream_keepalive_s=60.0, routing_policy="round-robin")
    record = gw.store.create(model_record("m", [kept, in_flight]))
    async with httpx.AsyncClient() as client:
        # One request to each: both connections pooled; a second, held open, to in_flight.
        while kept.requests == 0 or in_flight.requests == 0:
            response = await client.post(gw.url + CHAT, json=STREAM)
            assert response.text.endswith("data: [DONE]\n\n")
        kept_pool = {w for w in kept._writers if not w.is_closing()}
        assert len(kept_pool) == 1

        async def long_one() -> str:
            while True:  # until the round lands on in_flight
                response = await client.post(gw.url + CHAT, json=STREAM)
                if in_flight.requests == 2:
                    return response.text

        pending = asyncio.create_task(long_one())
        await _until(lambda: in_flight.requests == 2)
        rewrite(gw.store, record.id, _without_endpoints)
        # The idle one closes at the refresh, not after the 60 s keep-alive.
        await _until(lambda: all(w.is_closing() for w in kept._writers))
        # The one in flight finishes whole, and its connection is closed, not pooled.
        release.set()
        assert (await pending).endswith("data: [DONE]\n\n")
        await _until(lambda: all(w.is_closing() for w in in_flight._writers))


def _without_endpoints(record: ModelRecord) -> ModelRecord:
    record.endpoints, record.ready_instances = [], 0
    return record


async def _until(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        await asyncio.sleep(0.01)
