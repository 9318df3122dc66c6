"""Benchmark of the embedded control plane: ``python benchmarks/registry.py``.

Starts ``aif serve`` on a free port with a fresh data dir and reports:

1. register → ``ACTIVE`` latency with the simulator engine (target: p95 under 2 s);
2. ``GET /v1/models/{id}`` throughput and latency at 50 concurrent clients
   (target: at least 500 req/s, p99 under 20 ms);
3. the resident memory of an idle ``aif serve`` (target: under 150 MB).

The load generator runs in this process on the same machine, so the server shares the CPU
with it: the throughput figure is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

BODY = {
    "type": "DeepSeek-R1-Distill-Qwen-7B",
    "resource_type": "huawei.com/ascend-1980",
    "version": "1.0.0",
    "max_instance": 2,
    "min_instance": 1,
    "pvc": {"name": "release-models", "path": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"},
    "slo": {"target_time_to_first_token_p95": 1000, "target_time_per_output_token_p95": 20},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AIF_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--data-dir",
         str(data_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("aif serve did not start")


def register_to_active(url: str, count: int) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url) as client:
        for i in range(count):
            started = time.perf_counter()
            model = client.post("/v1/models", json={**BODY, "name": f"bench-{i}"}).json()["model"]
            while client.get(f"/v1/models/{model['id']}").json()["model"]["status"] != "ACTIVE":
                time.sleep(0.01)
            latencies.append(time.perf_counter() - started)
            client.delete(f"/v1/models/{model['id']}")
    return latencies


async def get_load(url: str, model_id: str, clients: int, duration_s: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.get(f"/v1/models/{model_id}")
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", type=int, default=20)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration-s", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _start(Path(tmp) / "data", port)
        try:
            time.sleep(2)
            idle_rss_mb = psutil.Process(proc.pid).memory_info().rss / 2**20
            print(f"idle aif serve RSS: {idle_rss_mb:.1f} MB (target < 150)")

            reg = register_to_active(url, args.registrations)
            print(
                f"register -> ACTIVE over {len(reg)} models: p50 {statistics.median(reg):.3f} s, "
                f"p95 {_percentile(reg, 0.95):.3f} s, max {max(reg):.3f} s (target p95 < 2 s)"
            )

            model = httpx.post(f"{url}/v1/models", json={**BODY, "name": "bench-get"}).json()
            model_id = model["model"]["id"]
            asyncio.run(get_load(url, model_id, args.clients, 1.0))  # warm-up
            lat = asyncio.run(get_load(url, model_id, args.clients, args.duration_s))
            print(
                f"GET /v1/models/{{id}} at {args.clients} clients: "
                f"{len(lat) / args.duration_s:.0f} req/s, p50 {_percentile(lat, 0.5) * 1000:.1f} ms, "
                f"p99 {_percentile(lat, 0.99) * 1000:.1f} ms (target >= 500 req/s, p99 < 20 ms)"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
