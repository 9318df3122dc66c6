"""Keys' limits across chat workers: ``python benchmarks/limits.py [--duration-s 60]``.

For each backend (``redis``: a redis-server started here on a free port, skipped when none is
installed; ``store``: the sqlite file, synced every ``AIF_LIMITS_SYNC_S``), starts
``aif serve --chat-workers 4`` with the simulator (fixed latency), one model, and three keys
made before the server starts: one at rpm 60, one at an rpm it never reaches (every request
takes the whole check) and one with no limits. 400 requests of the rpm-60 key are spread evenly
over the duration, each on a connection of its own so that all four processes take some, with
the same number for each of the other two keys interleaved. Printed per backend: how many of the
400 were admitted (target: 60 ± 6 over a minute) and the end-to-end latency p50/p95 of the
checked key's requests against the unlimited key's, whose difference is what the check costs.
Every child process is killed at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
ADMIN = "sk-aif-bench-admin-0123456789abcdefghijklmnopqrstuvwxyz"
REQUESTS = 400
WORKERS = 4
FIXED_PACE = ["--startup-delay-s", "0", "--fixed-ttft-ms", "10", "--fixed-itl-ms", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(predicate: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("timed out waiting for the server")


def _key(data_dir: Path, name: str, *limits: str) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", "create", name, *limits,
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    return made.stdout.strip()


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def run(backend: str, work: Path, duration_s: float, redis_url: str) -> None:
    data_dir = work / backend
    limited = _key(data_dir, "limited", "--rpm", "60")
    checked = _key(data_dir, "checked", "--rpm", str(10**7))
    free = _key(data_dir, "free")
    port = _free_port()
    env = {
        **os.environ,
        "AIF_ADMIN_KEY": ADMIN,
        "AIF_LOG_LEVEL": "WARNING",
        "AIF_ENGINE_ARGS": json.dumps(FIXED_PACE),
        "AIF_RECONCILE_INTERVAL_S": "0.1",
    }
    if backend == "redis":
        env["AIF_REDIS_URL"] = redis_url
    log = (work / f"aif-{backend}.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--data-dir",
         str(data_dir), "--chat-workers", str(WORKERS)],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        _wait(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200)
        body = {"name": "bench", "type": "DeepSeek-R1-Distill-Qwen-7B",
                "resource_type": "huawei.com/ascend-1980", "version": "1.0.0",
                "max_instance": 1, "min_instance": 1,
                "pvc": {"name": "models", "path": "bench"},
                "slo": {"target_time_to_first_token_p95": 1000,
                        "target_time_per_output_token_p95": 20}}  # fmt: skip
        model = httpx.post(f"{url}/v1/models", json=body, headers=admin).json()["model"]["id"]
        _wait(
            lambda: (
                httpx.get(f"{url}/v1/models/{model}", headers=admin).json()["model"]["status"]
                == "ACTIVE"
            )
        )
        time.sleep(2)  # every worker's routing table has the instance

        def chat(secret: str) -> tuple[int, float]:
            started = time.perf_counter()
            answer = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "bench", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 2},
                headers={"Authorization": f"Bearer {secret}"}, timeout=30,
            )  # fmt: skip
            return answer.status_code, time.perf_counter() - started

        gap_s = duration_s / REQUESTS
        results: dict[str, list[tuple[int, float]]] = {"limited": [], "checked": [], "free": []}
        with ThreadPoolExecutor(16) as pool:
            futures = []
            start = time.monotonic()
            for i in range(REQUESTS):
                time.sleep(max(0.0, start + i * gap_s - time.monotonic()))
                for name, secret in (("limited", limited), ("checked", checked), ("free", free)):
                    futures.append((name, pool.submit(chat, secret)))
            for name, future in futures:
                results[name].append(future.result())
        admitted = sum(1 for code, _ in results["limited"] if code == 200)
        errors = sum(1 for rs in results.values() for code, _ in rs if code not in (200, 429))
        checked_ms = [s * 1000 for code, s in results["checked"] if code == 200]
        free_ms = [s * 1000 for code, s in results["free"] if code == 200]
        p50 = _percentile(checked_ms, 50) - _percentile(free_ms, 50)
        p95 = _percentile(checked_ms, 95) - _percentile(free_ms, 95)
        print(
            f"{backend:6} admitted {admitted}/{REQUESTS} at rpm 60 over {duration_s:g}s "
            f"(other errors: {errors}); latency checked vs unlimited: "
            f"p50 {_percentile(checked_ms, 50):.1f} vs {_percentile(free_ms, 50):.1f} ms "
            f"({p50:+.2f}), p95 {_percentile(checked_ms, 95):.1f} vs "
            f"{_percentile(free_ms, 95):.1f} ms ({p95:+.2f})",
            flush=True,
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--backend", choices=["redis", "store"], action="append")
    args = parser.parse_args(argv)
    backends = args.backend or ["redis", "store"]
    with tempfile.TemporaryDirectory(prefix="aif-limits-") as tmp:
        work = Path(tmp)
        redis: subprocess.Popen[bytes] | None = None
        redis_port = _free_port()
        if "redis" in backends:
            if shutil.which("redis-server") is None:
                print("redis   skipped: no redis-server installed")
                backends.remove("redis")
            else:
                redis = subprocess.Popen(
                    ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
        try:
            for backend in backends:
                run(backend, work, args.duration_s, f"redis://127.0.0.1:{redis_port}/0")
        finally:
            if redis is not None:
                redis.kill()
                redis.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
