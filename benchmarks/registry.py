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
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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


def paced_get_load(
    port: int, path: str, clients: int, rate_per_s: float, duration_s: float
) -> tuple[list[float], float]:
    """``clients`` keep-alive connections sharing ``rate_per_s`` requests a second, open-loop.

    Each client sends on its own schedule whatever the previous answer took, so a slow answer
    shows up as latency instead of lowering the offered load. Plain ``http.client`` on
    threads: the lightest client the standard library has, so the load generator takes as
    little of the CPU it shares with the server as it can.
    """
    latencies: list[float] = []
    lock = threading.Lock()
    interval_s = clients / rate_per_s
    started_at = time.perf_counter() + 0.2

    def worker(offset_s: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        due = started_at + offset_s
        mine = []
        while due < started_at + duration_s:
            time.sleep(max(0.0, due - time.perf_counter()))
            sent = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"GET {path} answered {response.status}")
            mine.append(time.perf_counter() - sent)
            due += interval_s
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [
        threading.Thread(target=worker, args=(i * interval_s / clients,)) for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started_at


def closed_loop_with_wrk(url: str, clients: int, duration_s: float) -> str:
    """Saturation throughput from ``wrk`` (Debian package), when it is installed."""
    if shutil.which("wrk") is None:
        return "wrk not installed (apt-get install wrk): saturation throughput not measured"
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{duration_s:.0f}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rate = next(line for line in out.splitlines() if line.startswith("Requests/sec"))
    p99 = next(line for line in out.splitlines() if line.strip().startswith("99%"))
    return f"{rate.split()[-1]} req/s, p99 {p99.split()[-1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", type=int, default=20)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500.0, help="offered GET req/s")
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
            path = f"/v1/models/{model_id}"
            paced_get_load(port, path, args.clients, args.rate, 1.0)  # warm-up
            lat, took_s = paced_get_load(port, path, args.clients, args.rate, args.duration_s)
            print(
                f"GET /v1/models/{{id}}, {args.clients} clients offering {args.rate:.0f} req/s: "
                f"served {len(lat) / took_s:.0f} req/s, p50 {_percentile(lat, 0.5) * 1000:.1f} ms, "
                f"p99 {_percentile(lat, 0.99) * 1000:.1f} ms (target >= 500 req/s, p99 < 20 ms)"
            )
            saturation = closed_loop_with_wrk(
                f"{url}/v1/models/{model_id}", args.clients, args.duration_s
            )
            print(
                f"GET /v1/models/{{id}} saturation, {args.clients} closed-loop clients: "
                f"{saturation}"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
