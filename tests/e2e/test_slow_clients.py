"""Slow clients (slowloris headers, dripped bodies) are cut within the configured deadlines."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server

TIMEOUT_S = 1.0
CLIENTS = 5


@pytest.fixture
def guarded(server_factory: type[Server], tmp_path: Path) -> Server:
    server = server_factory(
        data_dir=tmp_path / "data",
        env={"AIF_HEADER_TIMEOUT_S": str(TIMEOUT_S), "AIF_BODY_IDLE_TIMEOUT_S": str(TIMEOUT_S)},
    )
    server.start()
    return server


async def _held_for(port: int, opening: bytes, drip: bytes) -> float:
    """Seconds until the server closes a connection that sends ``drip`` every 0.2 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(opening)
    try:
        while time.monotonic() - started < 10 * TIMEOUT_S:
            try:
                if await asyncio.wait_for(reader.read(65536), 0.2) == b"":
                    break
            except TimeoutError:
                writer.write(drip)
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started


SLOW_HEADERS = (b"POST /v1/models HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n")
SLOW_BODY = (
    b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\n\r\n{",
    b" ",
)


async def test_slow_headers_and_slow_bodies_are_cut(guarded: Server) -> None:
    held = await asyncio.wait_for(
        asyncio.gather(
            *[_held_for(guarded.port, *SLOW_HEADERS) for _ in range(CLIENTS)],
            *[_held_for(guarded.port, *SLOW_BODY) for _ in range(CLIENTS)],
        ),
        timeout=20,
    )
    headers, bodies = held[:CLIENTS], held[CLIENTS:]
    print(f"slow headers cut after {max(headers):.2f}s, slow bodies after {max(bodies):.2f}s")
    assert all(TIMEOUT_S * 0.9 < t < TIMEOUT_S + 0.6 for t in held), held


def test_past_max_connections_is_a_json_503(server_factory: type[Server], tmp_path: Path) -> None:
    server = server_factory(data_dir=tmp_path / "data", env={"AIF_MAX_CONNECTIONS": "3"})
    server.start()
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        time.sleep(0.2)
        answer = httpx.get(f"{server.url}/health", timeout=5)
    finally:
        for sock in held:
            sock.close()
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["retry-after"] == "1"
    assert "AIF_MAX_CONNECTIONS" in answer.json()["error"]["message"]
