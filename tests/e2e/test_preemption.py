"""Priorities on a real ``aif serve`` with simulated engines on 2 cards: a model short of cards
takes a lower-priority model's spare instance, drained first, and gives it back when it goes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import Server, engine_processes
from tests.e2e.test_autoscale import FIXED_PACE, _get, _model_name, _register, _stream

pytestmark = pytest.mark.slow


def _preempt_events(server: Server, model_id: str) -> list[dict[str, object]]:
    events = httpx.get(f"{server.url}/v1/models/{model_id}/events", timeout=5).json()["events"]
    return [e for e in events if e["action"] == "model.preempt"]


def test_a_higher_priority_model_takes_a_spare_instance_without_cutting_a_stream(
    server_factory: type[Server], tmp_path: Path
) -> None:
    server = server_factory(
        data_dir=tmp_path / "data",
        engine_args=["--startup-delay-s", "0.2", *FIXED_PACE],
        env={
            "AIF_LOCAL_ACCELERATORS": "2",
            "AIF_ROUTING_POLICY": "round-robin",
            "AIF_SCALE_INTERVAL_S": "0.2",
            # The lender's own policy would scale it in when idle; not within this test.
            "AIF_SCALE_DOWNSCALE_DELAY_S": "600",
            "AIF_SCALE_IDLE_S": "600",
        },
    )
    server.start()
    batch_name, prod_name = _model_name(), _model_name()
    batch = _register(server, batch_name, min_instance=2, max_instance=2, priority=0)
    wait_until(lambda: _get(server, batch["id"])["ready_instances"] == 2)
    # Its floor lowered: one of its two instances is spare from now on.
    answer = httpx.put(f"{server.url}/v1/models/{batch['id']}", json={"min_instance": 1},
                       timeout=10)  # fmt: skip
    assert answer.status_code == 200, answer.text

    streams, tokens = 4, 200  # about 4 s each at 20 ms a token, on both instances
    started = [threading.Event() for _ in range(streams)]
    with ThreadPoolExecutor(streams) as pool:
        futures = [pool.submit(_stream, server, batch_name, tokens, ev) for ev in started]
        for ev in started:
            assert ev.wait(10), "a stream did not start"
        # Every card is taken: prod's instance waits, and batch lends it one.
        prod = _register(server, prod_name, min_instance=1, max_instance=1, priority=10)
        wait_until(lambda: _get(server, batch["id"])["instances"] == 1, timeout_s=10)
        # The lent instance drains: its streams still run, so prod still waits for its card.
        waiting = _get(server, prod["id"])
        assert waiting["status_code"] == "InsufficientAccelerators", waiting
        assert len(engine_processes(batch_name)) == 2 and not engine_processes(prod_name)
        results = [f.result(timeout=30) for f in futures]

    for result in results:
        assert result.status == 200, result.error
        assert result.done and result.tokens == tokens, f"cut after {result.tokens}: {result.error}"
    wait_until(lambda: _get(server, prod["id"])["status"] == "ACTIVE", timeout_s=20)
    assert len(engine_processes(batch_name)) == 1 and len(engine_processes(prod_name)) == 1
    [lent] = _preempt_events(server, batch["id"])
    assert lent["changes"] == {"replicas": {"from": 2, "to": 1}, "lent_to": {"to": prod_name}}
    assert f"lent to {prod_name} (priority 10 over 0)" in str(lent["reason"])

    # prod goes: the loan ends, and batch's own policy decides again.
    assert httpx.delete(f"{server.url}/v1/models/{prod['id']}", timeout=10).status_code == 202
    wait_until(lambda: len(_preempt_events(server, batch["id"])) == 2, timeout_s=20)
    given = _preempt_events(server, batch["id"])
    assert {"lent_to": {"from": prod_name}} in [e["changes"] for e in given]
