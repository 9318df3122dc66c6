"""Another process holds the SQLite write lock: liveness stays instant, writes get a 503.

A real ``aif serve`` on loopback; this test takes the write lock on its database with
``BEGIN IMMEDIATE`` (what another aif process mid-write, or an operator's ``sqlite3`` shell,
does) and queues writes behind it.
"""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import register_body
from tests.e2e.conftest import Server

BUSY_TIMEOUT_S = 1.0
WRITES = 45


def test_a_locked_store_keeps_health_instant_and_writes_503(
    server_factory: type[Server], tmp_path: Path
) -> None:
    server = server_factory(
        data_dir=tmp_path / "data", env={"AIF_STORE_BUSY_TIMEOUT_S": str(BUSY_TIMEOUT_S)}
    )
    server.start()
    assert httpx.get(f"{server.url}/ready", timeout=5).status_code == 200
    holder = sqlite3.connect(server.data_dir / "aif.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        limits = httpx.Limits(max_connections=WRITES + 1)
        with (
            ThreadPoolExecutor(WRITES) as pool,
            httpx.Client(timeout=30, limits=limits) as writer,
            httpx.Client(timeout=30) as client,
        ):
            writes = [
                pool.submit(
                    writer.post, f"{server.url}/v1/models", json=register_body(name=f"model-{i}")
                )
                for i in range(WRITES)
            ]
            time.sleep(0.2)  # the writes are queued on the store's threads
            latencies = []
            for _ in range(10):
                started = time.perf_counter()
                assert client.get(f"{server.url}/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)
            ready = client.get(f"{server.url}/ready")
            answers = [w.result() for w in writes]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    print(f"health under lock: max {max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 0.1, latencies
    assert ready.status_code == 503 and "retry-after" in ready.headers
    assert ready.json()["error"]["type"] == "service_unavailable_error"
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert int(answer.headers["retry-after"]) >= 1
        error = answer.json()["error"]
        assert error["type"] == "service_unavailable_error" and "locked" in error["message"]
    # The lock is gone: ready again, and writes succeed.
    assert httpx.get(f"{server.url}/ready", timeout=5).status_code == 200
    created = httpx.post(f"{server.url}/v1/models", json=register_body(), timeout=10)
    assert created.status_code == 201
