"""Benchmark of accelerator fault isolation: ``python benchmarks/faults.py [--streams 64]``.

``aif serve`` with simulated engines on 8 cards over 2 simulated nodes
(``AIF_LOCAL_ACCELERATORS={"node-a": 4, "node-b": 4}``) and three models of different
priorities: ``prod`` (priority 10, 2 instances of 1 card), ``batch`` (priority 0, one 4-card
instance) and ``spare`` (priority -5, 1 card). Two phases:

* **device fault under load**: ``--streams`` concurrent streams to ``prod``; after a second, one
  of its engines gets ``POST /admin/faults {"device_fault": true}`` (it logs a device error and
  exits). Reported: requests failed before their first byte (the gateway should have retried
  them on the other instance), streams cut mid-answer (those on the failed card, which no
  gateway can save), the time from the fault until ``prod`` has two ready instances again,
  whether any instance sits on the faulted card afterwards, and the card's quarantine reason.
* **cards exhausted**: ``spare`` asks for 4 instances where 1 card is free: the time until its
  ``status_msg`` says why it waits, and the engine processes running against the inventory.
* **priority**: the faulted card released, ``spare`` runs 2 instances (1 above its minimum) and
  every card is taken; with streams on ``spare`` and on ``prod``, ``prod`` is asked for a third
  instance (its ``min_instance`` raised to 3, as a burst's scale-up would). Reported: the time
  until ``prod`` has 3 ready instances, ``spare``'s streams cut (none should be: the lent
  instance drains first), requests failed on either model, and the ``model.preempt`` events.

Every child process is killed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
SMALL, LARGE = "DeepSeek-R1-Distill-Qwen-7B", "QwQ-32B"
CARDS = {"node-a": 4, "node-b": 4}
ENGINE_ARGS = ["--fixed-ttft-ms", "50", "--fixed-itl-ms", "20", "--max-num-seqs", "64"]
STREAM_TOKENS = 60  # about 1.2 s per stream at 20 ms a token
WAIT_S = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _body(name: str, type_: str, low: int, high: int, priority: int) -> dict[str, Any]:
    return {"name": name, "type": type_, "resource_type": "huawei.com/ascend-1980",
            "version": "1", "max_instance": high, "min_instance": low, "priority": priority,
            "pvc": {"name": "models", "path": name},
            "slo": {"target_time_to_first_token_p95": 2000,
                    "target_time_per_output_token_p95": 100}}  # fmt: skip


def _engines(aif: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in aif.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE and "simulator" in child.cmdline():
                found.append(child)
    return found


def _wait(check: Any, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > WAIT_S:
            raise TimeoutError(what)
        time.sleep(0.05)
    return time.monotonic() - started


def _model(url: str, name: str) -> dict[str, Any]:
    model: dict[str, Any] = httpx.get(f"{url}/v1/models/{name}").json()["model"]
    return model


async def _stream(
    client: httpx.AsyncClient, url: str, counts: dict[str, int], model: str = "prod"
) -> None:
    body = {"model": model, "stream": True, "max_tokens": STREAM_TOKENS,
            "messages": [{"role": "user", "content": "tell me about cards"}]}  # fmt: skip
    got_bytes = False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as answer:
            if answer.status_code != 200:
                counts["failed_before_first_byte"] += 1
                return
            async for chunk in answer.aiter_text():
                got_bytes = got_bytes or bool(chunk)
                if '"error"' in chunk:
                    raise httpx.ReadError("error event")
        counts["ok"] += 1
    except httpx.HTTPError:
        counts["cut_mid_stream" if got_bytes else "failed_before_first_byte"] += 1


async def _load(
    url: str, streams: int, duration_s: float, counts: dict[str, int], model: str = "prod"
) -> None:
    deadline = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(trust_env=False, timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                await _stream(client, url, counts, model)

        await asyncio.gather(*(worker() for _ in range(streams)))


def _fault_phase(url: str, aif: psutil.Process, streams: int) -> dict[str, Any]:
    counts = {"ok": 0, "failed_before_first_byte": 0, "cut_mid_stream": 0}
    before = _model(url, "prod")["instance_accelerators"]
    victim_id, (victim_card,) = sorted(before.items())[0]
    targets = httpx.get(f"{url}/discovery/prometheus").json()
    (victim,) = [g["targets"][0] for g in targets if g["labels"].get("instance_id") == victim_id]
    result: dict[str, Any] = {}

    def fault_then_watch() -> None:
        time.sleep(1.0)
        httpx.post(f"http://{victim}/admin/faults", json={"device_fault": True})
        result["replaced_s"] = _wait(
            lambda: (
                (m := _model(url, "prod"))["ready_instances"] == 2
                and victim_id not in m["instance_accelerators"]
                and len(m["instance_accelerators"]) == 2
            ),
            "prod replaced",
        )

    async def run() -> None:
        watcher = asyncio.to_thread(fault_then_watch)
        await asyncio.gather(_load(url, streams, 6.0, counts), watcher)

    asyncio.run(run())
    after = _model(url, "prod")["instance_accelerators"]
    cards = httpx.get(f"{url}/v1/accelerators").json()["cards"]
    quarantined = [c for c in cards if c["state"] == "quarantined"]
    result.update(counts)
    result["faulted_card"] = victim_card
    result["instances_on_faulted_card_after"] = sum(victim_card in v for v in after.values())
    result["quarantined"] = [f"{c['node']}/{c['index']}" for c in quarantined]
    result["reason"] = quarantined[0]["quarantine"]["reason"] if quarantined else ""
    return result


def _exhausted_phase(url: str, aif: psutil.Process) -> dict[str, Any]:
    free = httpx.get(f"{url}/v1/accelerators").json()["totals"]["huawei.com/ascend-1980"]["free"]
    started = time.monotonic()
    httpx.put(f"{url}/v1/models/spare", json={"min_instance": 4, "max_instance": 4})
    waited_s = _wait(lambda: "waiting for" in _model(url, "spare")["status_msg"], "a reason")
    time.sleep(2.0)  # a few passes more: nothing else may start
    spare = _model(url, "spare")
    view = httpx.get(f"{url}/v1/accelerators").json()["totals"]["huawei.com/ascend-1980"]
    return {"free_before": free, "reason_after_s": round(waited_s, 2),
            "status": spare["status"], "status_msg": spare["status_msg"],
            "engines": len(_engines(aif)), "cards_allocated": view["allocated"],
            "elapsed_s": round(time.monotonic() - started, 1)}  # fmt: skip


def _priority_phase(url: str, streams: int) -> dict[str, Any]:
    (card,) = [c for c in httpx.get(f"{url}/v1/accelerators").json()["cards"]
               if c["state"] == "quarantined"]  # fmt: skip
    httpx.post(f"{url}/v1/accelerators/{card['node']}/{card['index']}/release")
    httpx.put(f"{url}/v1/models/spare", json={"min_instance": 2, "max_instance": 2})
    _wait(lambda: _model(url, "spare")["ready_instances"] == 2, "spare at 2")
    httpx.put(f"{url}/v1/models/spare", json={"min_instance": 1})
    counts = {name: {"ok": 0, "failed_before_first_byte": 0, "cut_mid_stream": 0}
              for name in ("prod", "spare")}  # fmt: skip
    result: dict[str, Any] = {}

    def burst_then_watch() -> None:
        time.sleep(1.0)
        started = time.monotonic()
        httpx.put(f"{url}/v1/models/prod", json={"min_instance": 3, "max_instance": 3})
        result["prod_three_ready_s"] = round(_wait(
            lambda: _model(url, "prod")["ready_instances"] == 3, "prod at 3"), 2)  # fmt: skip
        result["spare_instances_after"] = _model(url, "spare")["instances"]
        result["elapsed_s"] = round(time.monotonic() - started, 2)

    async def run() -> None:
        await asyncio.gather(_load(url, streams // 2, 8.0, counts["prod"], "prod"),
                             _load(url, streams // 2, 8.0, counts["spare"], "spare"),
                             asyncio.to_thread(burst_then_watch))  # fmt: skip

    asyncio.run(run())
    events = httpx.get(f"{url}/v1/models/spare/events").json()["events"]
    result["streams"] = counts
    result["preempt_events"] = [
        {"changes": e["changes"], "reason": e["reason"]}
        for e in events
        if e["action"] == "model.preempt"
    ]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aif-faults-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AIF_LOG_LEVEL": "WARNING", "AIF_ENGINE_ARGS": json.dumps(ENGINE_ARGS),
           "AIF_LOCAL_ACCELERATORS": json.dumps(CARDS),
           "AIF_QUARANTINE_PROBATION_S": "0"}  # fmt: skip
    log = (work / "aif.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--data-dir", str(work)],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    aif = psutil.Process(process.pid)
    try:
        _wait(lambda: _up(url), "aif to listen")
        for body in (_body("prod", SMALL, 2, 2, 10), _body("batch", LARGE, 1, 1, 0),
                     _body("spare", SMALL, 1, 1, -5)):  # fmt: skip
            assert httpx.post(f"{url}/v1/models", json=body).status_code == 201
        names = ("prod", "batch", "spare")
        start_s = _wait(lambda: all(_model(url, n)["status"] == "ACTIVE" for n in names), "ACTIVE")
        print(json.dumps({"models_active_s": round(start_s, 2)}))
        print(json.dumps({"device_fault": _fault_phase(url, aif, args.streams)}))
        print(json.dumps({"cards_exhausted": _exhausted_phase(url, aif)}))
        httpx.put(f"{url}/v1/models/spare", json={"min_instance": 1, "max_instance": 1})
        print(json.dumps({"priority": _priority_phase(url, args.streams)}))
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        process.kill()
        log.close()
    return 0


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
