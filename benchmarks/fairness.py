"""Benchmark of fair admission across API keys: ``python -m benchmarks.fairness [--quick]``.

One model (the ``QwQ-32B`` preset, min = max = 1 instance) on the simulator with the preset's
own engine arguments (``--max-num-seqs 128``) and aif's own admission defaults (capacity per
instance: the preset's max-num-seqs; ``AIF_ADMISSION_QUEUE_PER_INSTANCE`` 2,
``AIF_ADMISSION_WAIT_S`` 0.05 s). Two inference keys of weight 1: ``team-b`` sends Poisson
arrivals at ``B_RATE`` per second, ``team-a`` at ten times that, more than the instance
serves (about 36 requests a second of 32 prompt and 64 output tokens at 128 running), so the
model is saturated and the queue full. Three runs, each on a fresh ``aif serve``:

* ``B alone``: team-b's load only;
* ``FIFO`` (``AIF_ADMISSION_FAIR=false``): both, one first-come, first-served queue;
* ``fair`` (the default): both, the queue shared by weight.

Per run: team-b's p50 and p95 time to first token (first content chunk, client side) over
the requests sent after ``WARMUP_S``, both keys' answers (200) and refusals (429), and the
gateway's slots while anyone waited: ``aif_requests_in_flight`` over
``aif_capacity_requests`` in ``GET /metrics`` samples taken every ``SAMPLE_S`` with
``aif_requests_queued`` > 0, and how many of those samples had a slot free.

aif runs on core 0; the engine and the load generator on core 1. Every child process is
killed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.autoscale import (
    LOAD_CORE,
    MODEL_NAME,
    Aif,
    Phase,
    Result,
    _fmt,
    _one,
    _p95,
    _pin,
    _wait,
    shaped_trace,
)
from domain.settings import Settings

MODEL_TYPE = "QwQ-32B"
ADMIN = "sk-aif-fairness-bench-admin-0123456789abcdefghij"
B_RATE = 4.0  # requests per second
FLOOD_FACTOR = 10
PROMPT_TOKENS = 32
OUTPUT_TOKENS = 64
DURATION_S = 60.0
# Team-a's concurrency takes a few seconds to reach the instance's 128 slots.
WARMUP_S = 10.0
SAMPLE_S = 0.2
_DEFAULTS = Settings.model_fields
# aif's own admission settings, whatever the benchmark helpers' Aif sets for its own runs.
ADMISSION = (
    ("AIF_ADMISSION_QUEUE_PER_INSTANCE", str(_DEFAULTS["admission_queue_per_instance"].default)),
    ("AIF_ADMISSION_WAIT_S", str(_DEFAULTS["admission_wait_s"].default)),
    ("AIF_ADMIN_KEY", ADMIN),
)
RUNS = {
    "alone": ("B alone", "true", False),
    "fifo": ("FIFO (AIF_ADMISSION_FAIR=false)", "false", True),
    "fair": ("fair queuing (default)", "true", True),
}
_SERIES = re.compile(r'^(aif_requests_in_flight|aif_requests_queued|aif_capacity_requests)'
                     rf'\{{model="{MODEL_NAME}"\}} (\S+)$', re.M)  # fmt: skip


@dataclass
class Slots:
    """Gateway samples taken while requests waited: (in flight, capacity)."""

    waiting: list[tuple[float, float]] = field(default_factory=list)
    samples: int = 0


@dataclass
class Outcome:
    label: str
    a: list[Result]
    b: list[Result]
    slots: Slots


def _headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def setup(aif: Aif) -> tuple[str, str]:
    """Register the model (min = max = 1) and make the two keys; their secrets."""
    admin = httpx.Client(base_url=aif.url, headers=_headers(ADMIN), timeout=10)
    body = {
        "name": MODEL_NAME, "type": MODEL_TYPE, "resource_type": "huawei.com/ascend-1980",
        "version": "1.0.0", "max_instance": 1, "min_instance": 1,
        "pvc": {"name": "release-models", "path": "x/y"},
        "slo": {"target_time_to_first_token_p95": 1000, "target_time_per_output_token_p95": 50},
    }  # fmt: skip
    answer = admin.post("/v1/models", json=body)
    answer.raise_for_status()
    model_id = answer.json()["model"]["id"]

    def ready() -> bool:
        model = admin.get(f"/v1/models/{model_id}").json()["model"]
        return bool(model["status"] == "ACTIVE" and model["ready_instances"] == 1)

    _wait(ready, 60, "model ACTIVE")
    secrets = []
    for name in ("team-a", "team-b"):
        made = admin.post("/v1/keys", json={"name": name, "scope": "inference", "weight": 1})
        made.raise_for_status()
        secrets.append(made.json()["secret"])
    return secrets[0], secrets[1]


async def _sample(url: str, origin: float, slots: Slots) -> None:
    async with httpx.AsyncClient(timeout=2, headers=_headers(ADMIN), trust_env=False) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                text = (await client.get(f"{url}/metrics")).text
                values = {name: float(value) for name, value in _SERIES.findall(text)}
                if time.perf_counter() - origin >= WARMUP_S and len(values) == 3:
                    slots.samples += 1
                    if values["aif_requests_queued"] > 0:
                        slots.waiting.append(
                            (values["aif_requests_in_flight"], values["aif_capacity_requests"])
                        )
            await asyncio.sleep(SAMPLE_S)


async def offer(url: str, secret: str, rate: float, seed: int, duration_s: float,
                origin: float) -> list[Result]:  # fmt: skip
    """One key's open-loop Poisson load; each request's result."""
    import aiohttp

    trace = shaped_trace((Phase("load", rate, duration_s),), seed,
                         [(PROMPT_TOKENS, OUTPUT_TOKENS)])  # fmt: skip
    results = [Result(a.at_s) for a in trace]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), headers=_headers(secret),
        timeout=aiohttp.ClientTimeout(total=None),
    ) as session:  # fmt: skip
        tasks = []
        for arrival, result in zip(trace, results, strict=True):
            await asyncio.sleep(max(0.0, origin + arrival.at_s - time.perf_counter()))
            tasks.append(asyncio.create_task(_one(session, url, arrival, result)))
        await asyncio.gather(*tasks)
    return results


async def measure(label: str, aif: Aif, a: str, b: str, flood: bool, duration_s: float,
                  seed: int) -> Outcome:  # fmt: skip
    origin = time.perf_counter()
    slots = Slots()
    sampler = asyncio.create_task(_sample(aif.url, origin, slots))
    loads = [offer(aif.url, b, B_RATE, seed, duration_s, origin)]
    if flood:
        loads.append(offer(aif.url, a, B_RATE * FLOOD_FACTOR, seed + 1, duration_s, origin))
    results = await asyncio.gather(*loads)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    return Outcome(label, results[1] if flood else [], results[0], slots)


def _counts(results: list[Result]) -> str:
    measured = [r for r in results if r.sent_at >= WARMUP_S]
    ok = sum(r.ok for r in measured)
    refused = sum(r.error == "HTTP 429" for r in measured)
    other = len(measured) - ok - refused
    return f"{ok} / {refused}" + (f" (+{other} failed)" if other else "")


def _ms(value: float | None) -> str:
    return _fmt(None if value is None else value * 1000)


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| run | B p50 TTFT ms | B p95 TTFT ms | B 200 / 429 | A 200 / 429 | slots used while "
        "waiting | samples with a free slot while waiting |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        ttfts = sorted(r.ttft_s for r in o.b if r.sent_at >= WARMUP_S and r.ok and r.ttft_s)
        p50 = ttfts[len(ttfts) // 2] if ttfts else None
        waiting = o.slots.waiting
        used = (f"{sum(f / c for f, c in waiting) / len(waiting):.1%} "
                f"({len(waiting)} of {o.slots.samples} samples)") if waiting else "-"  # fmt: skip
        free = sum(f < c for f, c in waiting)
        rows.append(
            f"| {o.label} | {_ms(p50)} | {_ms(_p95(ttfts))} | {_counts(o.b)} | "
            f"{_counts(o.a) if o.a else '-'} | {used} | {free if waiting else '-'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 s per run instead of 60 s")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--run", action="append", choices=sorted(RUNS),
                        help="only these runs (repeatable; default: all three)")  # fmt: skip
    parser.add_argument("--keep-logs", action="store_true", help="keep the work dir and logs")
    args = parser.parse_args(argv)
    duration_s = 20.0 + WARMUP_S if args.quick else DURATION_S
    work = Path(tempfile.mkdtemp(prefix="aif-fairness-bench-"))

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    _pin(0, LOAD_CORE)
    print(f"# fairness benchmark; logs in {work}")
    print(f"model {MODEL_TYPE}, 1 instance, the preset's engine arguments; team-b "
          f"{B_RATE:g}/s, team-a {B_RATE * FLOOD_FACTOR:g}/s, Poisson, {PROMPT_TOKENS} prompt "
          f"and {OUTPUT_TOKENS} output tokens; {duration_s:g}s per run, the first "
          f"{WARMUP_S:g}s not counted", flush=True)  # fmt: skip
    outcomes: list[Outcome] = []
    try:
        for key in args.run or list(RUNS):
            label, fair, flood = RUNS[key]
            aif = Aif(work, key, (*ADMISSION, ("AIF_ADMISSION_FAIR", fair)))
            try:
                a, b = setup(aif)
                print(f"  {label} ...", flush=True)
                outcomes.append(
                    asyncio.run(measure(label, aif, a, b, flood, duration_s, args.seed))
                )
            finally:
                aif.stop()
        print("\n" + table(outcomes))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
