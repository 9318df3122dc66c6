"""Benchmark of the inference path: ``python benchmarks/gateway.py [--quick] [--scenario NAME]``.

Measures what a gateway in front of engine instances costs, with three columns per scenario:

* ``direct``: the load generator spreads requests over the engines itself (round-robin);
* ``aif``: through ``aif serve`` (its chat-job-executor), which started the engines;
* ``vllm-router``: the Rust router (``pip install vllm-router``) in front of the same engines,
  skipped when it is not installed.

The engines are the simulator in its fixed-latency mode (``--fixed-ttft-ms``,
``--fixed-itl-ms``), started by aif from a model registered with min = max instances, so every
column uses the very same processes. Gateways run on core 0, engines and the load generator
(a separate asyncio + aiohttp process) on core 1. Each scenario is bounded in requests and
time; every child process is killed at exit, on Ctrl-C or on an error.

Per column: req/s, TTFT (first content chunk) and end-to-end latency p50/p99, errors
(non-200 answers, broken streams, timeouts), gateway CPU seconds per 1,000 requests (the
gateway's process tree without the engines) and the gateway's peak RSS. ``--aif-env KEY=VALUE``
(repeatable) is passed to aif, e.g. ``AIF_ROUTING_POLICY=prefix`` for the shared-prefix run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "bench"
MODEL_TYPE = "DeepSeek-R1-Distill-Qwen-7B"
GATEWAY_CORE = 0
LOAD_CORE = 1
COLUMNS = ("direct", "aif", "vllm-router")


# --------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Setup:
    """Engines and gateways shared by the scenarios that name it."""

    name: str
    engines: int
    engine_args: tuple[str, ...]
    router_policy: str = "round_robin"


def _fixed(
    ttft_ms: int, itl_ms: int, max_num_seqs: int, prefill_ms: float = 0.0, kv_blocks: int = 0
) -> tuple[str, ...]:
    cache = ("--kv-cache-blocks", str(kv_blocks)) if kv_blocks else ()
    return ("--startup-delay-s", "0", "--fixed-ttft-ms", str(ttft_ms), "--fixed-itl-ms",
            str(itl_ms), "--max-num-seqs", str(max_num_seqs), "--prefill-ms-per-token",
            str(prefill_ms), *cache)  # fmt: skip


SETUPS = {
    s.name: s
    for s in (
        Setup("fast-1", 1, _fixed(50, 10, 1024)),
        Setup("fast-4", 4, _fixed(50, 10, 1024)),
        Setup("slow-1", 1, _fixed(50, 300, 1024)),
        # The preset's prefill cost (0.06 ms per uncached prompt token): long shared prefixes
        # are cheaper on an instance whose prefix cache holds them.
        Setup("prefix-4", 4, _fixed(50, 10, 1024, prefill_ms=0.06), router_policy="cache_aware"),
        # The same with 512 KV blocks of 128 tokens per engine: a prefix cache that holds 32 of
        # the wide workload's 64 prefixes, where the four engines together hold them all.
        Setup(
            "prefix-wide-4",
            4,
            _fixed(50, 10, 1024, prefill_ms=0.06, kv_blocks=512),
            router_policy="cache_aware",
        ),
        # 16 sequences of 50 + 16 x 10 ms: about 76 requests/s of capacity.
        Setup("small-1", 1, _fixed(50, 10, 16)),
    )
}


@dataclass(frozen=True)
class Scenario:
    name: str
    setup: str
    description: str
    concurrency: int = 32  # closed loop: streams kept open at once
    rate: float = 0.0  # open loop: arrivals per second (concurrency then ignored)
    duration_s: float = 20.0  # how long new requests are started
    max_requests: int = 100_000
    max_tokens: int = 64
    stream: bool = True
    prefix_groups: int = 0  # shared-prefix workload: this many long prefixes
    prefix_chars: int = 0
    timeout_s: float = 60.0  # per request

    def quick(self) -> Scenario:
        changes: dict[str, Any] = {
            "duration_s": min(self.duration_s, 3.0),
            "timeout_s": min(self.timeout_s, 15.0),
        }
        if self.name == "slow-streams":
            changes.update(concurrency=200, max_tokens=20, max_requests=200)
        return _replace(self, **changes)


def _replace(scenario: Scenario, **changes: Any) -> Scenario:
    return Scenario(**{**scenario.__dict__, **changes})


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("stream-32x1", "fast-1", "32 streams, 1 engine", concurrency=32),
        Scenario("stream-256x1", "fast-1", "256 streams, 1 engine", concurrency=256),
        Scenario("nonstream-32x1", "fast-1", "32 non-streaming, 1 engine", stream=False),
        Scenario("stream-256x4", "fast-4", "256 streams, 4 engines", concurrency=256),
        Scenario(
            "slow-streams",
            "slow-1",
            "1,000 streams open ~30 s each (100 tokens x 300 ms)",
            concurrency=1000,
            max_requests=1000,
            max_tokens=100,
            duration_s=0.0,
            timeout_s=90,
        ),
        Scenario(
            "shared-prefix",
            "prefix-4",
            "32 streams, 8 prefixes of ~2,000 tokens, 4 engines",
            concurrency=32,
            max_tokens=16,
            prefix_groups=8,
            prefix_chars=8000,
        ),
        Scenario(
            "shared-prefix-wide",
            "prefix-wide-4",
            "32 streams, 64 prefixes of ~2,000 tokens, 4 engines caching 32 each",
            concurrency=32,
            max_tokens=16,
            prefix_groups=64,
            prefix_chars=8000,
        ),
        Scenario(
            "overload",
            "small-1",
            "open loop at 3x capacity (~230 req/s offered, ~76 served)",
            rate=230.0,
            max_tokens=16,
            duration_s=8.0,
            timeout_s=20.0,
        ),
    )
}


# --------------------------------------------------------------------------------------------
# Processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(pid: int, core: int) -> None:
    if os.cpu_count() and (os.cpu_count() or 0) > core:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {core})


class Processes:
    """Every process this benchmark starts, killed (with their children) on close."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str], log: Path, core: int) -> psutil.Process:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=REPO, start_new_session=True,
            )  # fmt: skip
        self._procs.append(proc)
        _pin(proc.pid, core)
        return psutil.Process(proc.pid)

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        self._procs.append(proc)

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def stop(self, process: psutil.Process) -> None:
        with contextlib.suppress(psutil.Error):
            family = [*process.children(recursive=True), process]
            # The parent first: aif stops its own engines; what is left is ended after.
            process.terminate()
            _, alive = psutil.wait_procs([process], timeout=10)
            for p in family:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
            _, alive = psutil.wait_procs(family, timeout=5)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(alive, timeout=2)
        self._procs = [p for p in self._procs if p.pid != process.pid]
        for proc in list(self._procs):
            if proc.poll() is not None:
                self._procs.remove(proc)

    def close(self) -> None:
        for proc in list(self._procs):
            with contextlib.suppress(psutil.Error):
                self.stop(psutil.Process(proc.pid))
        for proc in self._procs:
            with contextlib.suppress(OSError):
                proc.kill()
        self._procs.clear()


def _wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f}s")


@dataclass
class Running:
    """One setup up: aif, its engines and (when installed) vllm-router on them."""

    aif_url: str
    aif: psutil.Process
    engine_urls: list[str]
    engine_pids: set[int]
    router_url: str | None = None
    router: psutil.Process | None = None


def _arg(args: tuple[str, ...], flag: str) -> str:
    return args[args.index(flag) + 1]


def start_setup(
    setup: Setup,
    procs: Processes,
    work: Path,
    aif_env: dict[str, str],
    headers: dict[str, str] | None = None,
) -> Running:
    port = _free_port()
    data_dir = work / f"aif-{setup.name}"
    env = {
        **os.environ,
        "AIF_LOG_LEVEL": "WARNING",
        "AIF_ENGINE_ARGS": json.dumps(list(setup.engine_args)),
        # Admission matches what the engines were started with, as it matches the preset's
        # max-num-seqs in a deployment.
        "AIF_MAX_IN_FLIGHT_PER_INSTANCE": _arg(setup.engine_args, "--max-num-seqs"),
        # The autoscaler must not change replicas during a run.
        "AIF_SCALE_INTERVAL_S": "86400",
        **aif_env,
    }
    aif = procs.start(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--data-dir",
         str(data_dir)],
        env, work / f"aif-{setup.name}.log", GATEWAY_CORE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/health")
    body = {
        "name": MODEL_NAME, "type": MODEL_TYPE, "resource_type": "huawei.com/ascend-1980",
        "max_instance": setup.engines, "min_instance": setup.engines,
        "pvc": {"name": "release-models", "path": "x/y"},
        "slo": {"target_time_to_first_token_p95": 1000, "target_time_per_output_token_p95": 50},
    }  # fmt: skip
    answer = httpx.post(f"{url}/v1/models", json=body, timeout=10, headers=headers)
    answer.raise_for_status()
    model_id = answer.json()["model"]["id"]
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/v1/models/{model_id}", timeout=5, headers=headers).json()[
            "model"
        ]["status"]
        if status == "ACTIVE":
            break
        time.sleep(0.1)
    if status != "ACTIVE":
        raise RuntimeError(f"the model did not become ACTIVE within 60s (status {status})")
    engines: dict[int, int] = {}
    for child in aif.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            argv = child.cmdline()
            if "simulator" in argv and "--port" in argv:
                engines[child.pid] = int(argv[argv.index("--port") + 1])
    if len(engines) != setup.engines:
        raise RuntimeError(f"found {len(engines)} engines under aif, expected {setup.engines}")
    for pid in engines:
        _pin(pid, LOAD_CORE)
    engine_urls = [f"http://127.0.0.1:{p}" for p in sorted(engines.values())]
    for engine_url in engine_urls:
        _wait_http(f"{engine_url}/health")
    running = Running(url, aif, engine_urls, set(engines))
    router_bin = shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")
    if Path(router_bin).exists():
        router_port = _free_port()
        running.router = procs.start(
            [router_bin, "--host", "127.0.0.1", "--port", str(router_port), "--worker-urls",
             *engine_urls, "--policy", setup.router_policy, "--log-level", "warning",
             "--log-dir", str(work / f"router-{setup.name}")],
            dict(os.environ), work / f"router-{setup.name}.log", GATEWAY_CORE,
        )  # fmt: skip
        running.router_url = f"http://127.0.0.1:{router_port}"
        _wait_http(f"{running.router_url}/health", timeout_s=60)
    return running


def _tree(process: psutil.Process, exclude: set[int]) -> list[psutil.Process]:
    family = [process]
    with contextlib.suppress(psutil.Error):
        family += [c for c in process.children(recursive=True) if c.pid not in exclude]
    return family


def _cpu_s(process: psutil.Process, exclude: set[int]) -> float:
    total = 0.0
    for p in _tree(process, exclude):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _rss_mb(process: psutil.Process, exclude: set[int]) -> float:
    total = 0
    for p in _tree(process, exclude):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


# --------------------------------------------------------------------------------------------
# Load generator (run as a separate process: ``gateway.py --loadgen``, spec on stdin)


def _prompts(scenario: Scenario, rng: random.Random) -> Iterator[str]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    prefixes = [
        " ".join(rng.choice(words) for _ in range(scenario.prefix_chars // 6))[
            : scenario.prefix_chars
        ]
        for _ in range(scenario.prefix_groups)
    ]
    for i in itertools.count():
        question = f"Question {i}: summarise the routing of request {rng.random():.6f}."
        if prefixes:
            yield f"{rng.choice(prefixes)}\n\n{question}"
        else:
            yield question


async def _one(
    session: Any, url: str, body: dict[str, Any], scenario: Scenario, out: dict[str, Any]
) -> None:
    import aiohttp

    started = time.perf_counter()
    try:
        async with asyncio.timeout(scenario.timeout_s):
            async with session.post(url, json=body) as response:
                if response.status != 200:
                    await response.read()
                    elapsed = time.perf_counter() - started
                    out["status"][str(response.status)] = (
                        out["status"].get(str(response.status), 0) + 1
                    )
                    if response.status == 429:
                        out["reject_s"].append(elapsed)
                    out["errors"] += 1
                    return
                ttft: float | None = None
                done = False
                if not scenario.stream:
                    answer = await response.json()
                    ok = bool(answer["choices"][0]["message"]["content"])
                    now = time.perf_counter() - started
                    if ok:
                        out["ttft"].append(now)
                        out["e2e"].append(now)
                        out["ok"] += 1
                    else:
                        out["broken"] += 1
                        out["errors"] += 1
                    return
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    if line.startswith(b"data: [DONE]"):
                        done = True
                        break
                    if ttft is None and b'"content"' in line:
                        chunk = json.loads(line[6:])
                        choices = chunk.get("choices") or []
                        if choices and choices[0].get("delta", {}).get("content"):
                            ttft = time.perf_counter() - started
                e2e = time.perf_counter() - started
                if done and ttft is not None:
                    out["ttft"].append(ttft)
                    out["e2e"].append(e2e)
                    out["ok"] += 1
                else:
                    out["broken"] += 1
                    out["errors"] += 1
    except TimeoutError:
        out["timeouts"] += 1
        out["errors"] += 1
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        out["exceptions"][type(exc).__name__] = out["exceptions"].get(type(exc).__name__, 0) + 1
        out["errors"] += 1


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    scenario = Scenario(**spec["scenario"])
    urls: list[str] = spec["urls"]
    rng = random.Random(1)
    prompts = _prompts(scenario, rng)
    targets = itertools.cycle(urls)
    out: dict[str, Any] = {"ttft": [], "e2e": [], "ok": 0, "errors": 0, "broken": 0,
                           "timeouts": 0, "status": {}, "exceptions": {}, "reject_s": [],
                           "sent": 0}  # fmt: skip

    def body() -> dict[str, Any]:
        b: dict[str, Any] = {
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": next(prompts)}],
            "max_tokens": scenario.max_tokens,
            "ignore_eos": True,
            "stream": scenario.stream,
        }
        if scenario.stream:
            b["stream_options"] = {"include_usage": True}
        return b

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=spec.get("headers") or None
    ) as session:
        started = time.perf_counter()
        deadline = started + scenario.duration_s

        async def send() -> None:
            out["sent"] += 1
            await _one(session, next(targets) + "/v1/chat/completions", body(), scenario, out)

        if scenario.rate > 0:
            tasks: list[asyncio.Task[None]] = []
            interval = 1.0 / scenario.rate
            for i in range(scenario.max_requests):
                due = started + i * interval
                if due >= deadline:
                    break
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(send()))
            await asyncio.gather(*tasks)
        else:
            budget = itertools.count()

            async def worker() -> None:
                while next(budget) < scenario.max_requests:
                    await send()
                    if time.perf_counter() >= deadline:
                        return

            await asyncio.gather(*(worker() for _ in range(scenario.concurrency)))
        out["wall_s"] = time.perf_counter() - started
    return out


def loadgen_main() -> int:
    spec = json.loads(sys.stdin.read())
    result = asyncio.run(_load(spec))
    sys.stdout.write(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# Orchestration


@dataclass
class Column:
    result: dict[str, Any] = field(default_factory=dict)
    cpu_s: float | None = None
    rss_mb: float | None = None
    note: str = ""
    # Share of prompt tokens the engines' prefix caches served during the column.
    prefix_hit: float | None = None


def _prefix_cache(engine_urls: list[str]) -> tuple[float, float]:
    """Prompt tokens queried and hit in the engines' prefix caches so far, summed."""
    queried = hit = 0.0
    for url in engine_urls:
        for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
            if line.startswith("vllm:prefix_cache_queries_total"):
                queried += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_hits_total"):
                hit += float(line.rsplit(" ", 1)[1])
    return queried, hit


def run_load(
    scenario: Scenario,
    urls: list[str],
    gateway: psutil.Process | None,
    exclude: set[int],
    procs: Processes,
    headers: dict[str, str] | None = None,
    engine_urls: list[str] | None = None,
) -> Column:
    spec = json.dumps({"scenario": scenario.__dict__, "urls": urls, "headers": headers})
    cache_before = _prefix_cache(engine_urls) if engine_urls else None
    argv = [sys.executable, str(Path(__file__).resolve()), "--loadgen"]
    cpu_before = _cpu_s(gateway, exclude) if gateway else 0.0
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while gateway is not None and not stop.wait(0.5):
            peak[0] = max(peak[0], _rss_mb(gateway, exclude))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    limit_s = scenario.duration_s + scenario.timeout_s + 30
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, start_new_session=True,
        preexec_fn=lambda: _pin(0, LOAD_CORE),
    )  # fmt: skip
    procs.adopt(proc)
    try:
        stdout, _ = proc.communicate(spec.encode(), timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Column(note=f"load generator exceeded {limit_s:.0f}s")
    finally:
        stop.set()
        sampler.join()
        procs.forget(proc)
    column = Column(result=json.loads(stdout))
    if engine_urls and cache_before is not None:
        after = _prefix_cache(engine_urls)
        queried, hit = after[0] - cache_before[0], after[1] - cache_before[1]
        column.prefix_hit = hit / queried if queried else None
    if gateway is not None:
        column.cpu_s = _cpu_s(gateway, exclude) - cpu_before
        column.rss_mb = max(peak[0], _rss_mb(gateway, exclude))
    return column


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(scenario: Scenario, columns: dict[str, Column]) -> str:
    def row(label: str, fn: Any) -> str:
        cells = [fn(columns[c]) if c in columns else "skipped" for c in COLUMNS]
        return f"| {label:<26} | " + " | ".join(f"{c:>14}" for c in cells) + " |"

    def ms(key: str, q: float) -> Any:
        return lambda c: _fmt(None if (v := _pct(c.result.get(key, []), q)) is None else v * 1e3)

    def errors(c: Column) -> str:
        if c.note:
            return c.note[:14]
        return f"{c.result.get('errors', 0)}/{c.result.get('sent', 0)}"

    def per_1000(c: Column) -> str:
        ok = c.result.get("ok", 0) + c.result.get("errors", 0)
        return "-" if c.cpu_s is None or not ok else f"{c.cpu_s * 1000 / ok:.2f}"

    lines = [
        f"### {scenario.name}: {scenario.description}",
        "",
        "| " + f"{'':<26}" + " | " + " | ".join(f"{c:>14}" for c in COLUMNS) + " |",
        "|" + "-" * 28 + "|" + "|".join("-" * 15 + ":" for _ in COLUMNS) + "|",
        row("req/s (completed)", lambda c: _fmt(c.result.get("ok", 0) / c.result["wall_s"], 1)
            if c.result.get("wall_s") else "-"),
        row("TTFT p50 ms", ms("ttft", 0.5)),
        row("TTFT p99 ms", ms("ttft", 0.99)),
        row("e2e p50 ms", ms("e2e", 0.5)),
        row("e2e p99 ms", ms("e2e", 0.99)),
        row("errors / sent", errors),
        row("gateway CPU s / 1k req", per_1000),
        row("gateway RSS MB (peak)", lambda c: _fmt(c.rss_mb, 0)),
    ]  # fmt: skip
    if scenario.prefix_groups:
        lines.append(row("prefix cache hit %", lambda c: _fmt(
            None if c.prefix_hit is None else 100 * c.prefix_hit, 1)))  # fmt: skip
    if scenario.rate > 0:
        lines.append(row("429s", lambda c: str(c.result.get("status", {}).get("429", 0))))
        lines.append(row("429 latency p50 ms", ms("reject_s", 0.5)))
    details = []
    for name, c in columns.items():
        extra = {k: c.result.get(k) for k in ("status", "exceptions", "broken", "timeouts")}
        if any(extra.values()):
            details.append(f"  {name}: {json.dumps(extra)}")
    if details:
        lines += ["", "error detail:", *details]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per scenario")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), default=None,
                        help="run only this scenario (repeatable)")  # fmt: skip
    parser.add_argument("--aif-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment passed to aif serve (repeatable)")  # fmt: skip
    parser.add_argument("--columns", default=",".join(COLUMNS),
                        help="comma-separated subset of direct,aif,vllm-router")  # fmt: skip
    parser.add_argument(
        "--api-key",
        default="",
        metavar="KEY",
        help="run aif with this admin key (AIF_ADMIN_KEY) and send it",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the work dir and logs")
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        return loadgen_main()
    aif_env = dict(item.split("=", 1) for item in args.aif_env)
    # With --api-key, aif runs with that admin key and every request carries it.
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    if args.api_key:
        aif_env["AIF_ADMIN_KEY"] = args.api_key
    wanted = set(args.columns.split(","))
    names = args.scenario or list(SCENARIOS)
    scenarios = [SCENARIOS[n].quick() if args.quick else SCENARIOS[n] for n in names]
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="aif-gateway-bench-"))

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    _pin(0, LOAD_CORE)
    print(f"# gateway benchmark ({'quick' if args.quick else 'full'}); logs in {work}")
    print(f"aif env: {aif_env or '{}'}; cores: {os.cpu_count()}", flush=True)
    try:
        for setup_name in dict.fromkeys(s.setup for s in scenarios):
            setup = SETUPS[setup_name]
            running = start_setup(setup, procs, work, aif_env, headers)
            try:
                for scenario in (s for s in scenarios if s.setup == setup_name):
                    columns: dict[str, Column] = {}
                    targets: list[tuple[str, list[str], psutil.Process | None]] = [
                        ("direct", running.engine_urls, None),
                        ("aif", [running.aif_url], running.aif),
                    ]
                    if running.router_url and running.router:
                        targets.append(("vllm-router", [running.router_url], running.router))
                    for name, urls, gateway in targets:
                        if name not in wanted:
                            continue
                        print(f"  {scenario.name} / {name} ...", flush=True)
                        columns[name] = run_load(
                            scenario, urls, gateway, running.engine_pids, procs, headers,
                            running.engine_urls if scenario.prefix_groups else None,
                        )  # fmt: skip
                        time.sleep(1.0)  # let the engines drain between columns
                    print("\n" + table(scenario, columns) + "\n", flush=True)
            finally:
                procs.stop(running.aif)
                if running.router:
                    procs.stop(running.router)
        log_errors(work)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.close()
        if not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def log_errors(work: Path) -> None:
    """Print aif's and the engines' warnings and tracebacks, the first few of each log."""
    for log in sorted(work.rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if any(w in ln for w in ("ERROR", "Traceback", "WARNING"))]
        if bad:
            print(f"{log.relative_to(work)}: {len(bad)} warning/error lines, first ones:")
            for ln in bad[:5]:
                print(f"    {ln[:200]}")


if __name__ == "__main__":
    sys.exit(main())
