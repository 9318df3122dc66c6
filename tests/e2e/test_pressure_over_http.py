"""The scaling loop across separate role processes, as on a cluster: the chat-job-executor
reports a model at capacity to the task-executor-manager over HTTP (``AIF_SCALER_URL`` →
``POST /v1/scaler/pressure``), which reads the load from the gateway's ``/metrics`` and scales
at once, not at its next interval (here 600 s, so only the report can scale the model)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import register_body, wait_until
from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow

ADMIN = "aif-admin-" + "p" * 32


def _start(server_factory: type[Server], data_dir: Path, command: str, **env: str) -> Server:
    server = server_factory(data_dir=data_dir, command=command, env=env)
    server.start()
    return server


def _stream(url: str, name: str) -> None:
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
            "ignore_eos": True, "stream": True}  # fmt: skip
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers,
                      timeout=60) as answer:  # fmt: skip
        assert answer.status_code == 200, answer.read()
        for _ in answer.iter_lines():
            pass


def _scaled_by_pressure(
    server_factory: type[Server], tmp_path: Path, report: bool
) -> dict[str, Any]:
    data_dir = tmp_path / "data"
    # One slot per instance, in every role (one ConfigMap on a cluster).
    keyed = {"AIF_ADMIN_KEY": ADMIN, "AIF_MAX_IN_FLIGHT_PER_INSTANCE": "1"}
    _start(server_factory, data_dir, "model-job-executor")
    manager_port = server_factory(data_dir=data_dir).port
    scaler_url = f"http://127.0.0.1:{manager_port}"
    chat = _start(
        server_factory, data_dir, "chat-job-executor", **keyed,
        AIF_ADMISSION_QUEUE_PER_INSTANCE="10", AIF_ADMISSION_WAIT_S="60",
        **({"AIF_SCALER_URL": scaler_url} if report else {}),
    )  # fmt: skip
    manager = server_factory(
        data_dir=data_dir, command="task-executor-manager", port=manager_port,
        env={**keyed, "AIF_SCALE_INTERVAL_S": "600",
             "AIF_GATEWAY_METRICS_URLS": json.dumps([chat.url])},
    )  # fmt: skip
    manager.start()
    frontend = _start(server_factory, data_dir, "frontend", **keyed, AIF_CHAT_EXECUTOR_URL=chat.url)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    name = f"pressed-{uuid.uuid4().hex[:8]}"
    created = httpx.post(
        f"{frontend.url}/v1/models", headers=headers,
        json=register_body(name=name, min_instance=1, max_instance=2),
    )  # fmt: skip
    assert created.status_code == 201, created.text
    model_id = created.json()["model"]["id"]

    def model() -> dict[str, Any]:
        got = httpx.get(f"{frontend.url}/v1/models/{model_id}", headers=headers)
        return dict(got.json()["model"])

    wait_until(lambda: model()["status"] == "ACTIVE", timeout_s=30)
    # One slot at the one instance: every request after the first waits, and is reported
    # (the manager's source reads the gateway's /metrics afresh at each pass it runs).
    streams = [threading.Thread(target=_stream, args=(chat.url, name)) for _ in range(4)]
    for thread in streams:
        thread.start()
        time.sleep(0.4)
    with contextlib.suppress(AssertionError):  # not scaled: the caller says what it expects
        wait_until(lambda: model()["instances"] == 2, timeout_s=10)
    seen = model()
    for thread in streams:
        thread.join(timeout=60)
    return seen


def test_a_model_at_capacity_is_scaled_by_the_managers_pass_the_gateway_asked_for(
    server_factory: type[Server], tmp_path: Path
) -> None:
    seen = _scaled_by_pressure(server_factory, tmp_path, report=True)
    assert seen["instances"] == 2
    assert seen["scaling"]["inputs"]["stage"] == "panic"
    assert seen["scaling"]["inputs"]["queued"] >= 1


def test_without_the_report_the_interval_alone_decides(
    server_factory: type[Server], tmp_path: Path
) -> None:
    seen = _scaled_by_pressure(server_factory, tmp_path, report=False)
    assert seen["instances"] == 1
