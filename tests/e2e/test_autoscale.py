"""Acting on scaling decisions without losing a request, against a real ``aif serve``.

- Scale-in drains: streams in flight on the removed instance all finish, whole.
- After ``SIGTERM`` and a restart, the status tells the truth (never ``ACTIVE`` with nothing
  ready) and a chat sent at once is held until an instance is ready, then served.
- Scale to zero and back: an idle model with ``min_instance`` 0 goes ``IDLE`` with no engine;
  the next request is held while an instance starts, and is answered.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import register_body, wait_until
from tests.e2e.conftest import Server, engine_processes

pytestmark = pytest.mark.slow

# Simulated engines with a steady pace, so a stream's length is known in advance.
FIXED_PACE = ["--fixed-ttft-ms", "20", "--fixed-itl-ms", "20"]


def _model_name() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


def _get(server: Server, ref: str) -> dict[str, Any]:
    model: dict[str, Any] = httpx.get(f"{server.url}/v1/models/{ref}", timeout=5).json()["model"]
    return model


def _register(server: Server, name: str, **overrides: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/v1/models", json=register_body(name=name, **overrides), timeout=10
    )
    assert response.status_code == 201, response.text
    model: dict[str, Any] = response.json()["model"]
    return model


@dataclass
class Stream:
    status: int = 0
    tokens: int = 0
    done: bool = False
    usage_tokens: int | None = None
    first_token_s: float | None = None
    error: str = ""


def _stream(
    server: Server, name: str, max_tokens: int, started: threading.Event | None = None
) -> Stream:
    """One streamed chat: content chunks counted, ``[DONE]`` seen, reported usage."""
    out = Stream()
    body = {
        "model": name,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    begin = time.monotonic()
    try:
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", json=body, timeout=60
        ) as response:
            out.status = response.status_code
            if response.status_code != 200:
                out.error = response.read().decode(errors="replace")
                return out
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    out.done = True
                    continue
                if not line.startswith("data: "):
                    if line:
                        out.error += line
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if chunk.get("usage"):
                    out.usage_tokens = chunk["usage"]["completion_tokens"]
                choices = chunk.get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    out.tokens += 1
                    if out.first_token_s is None:
                        out.first_token_s = time.monotonic() - begin
                        if started is not None:
                            started.set()
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def test_scale_in_drains_streams_in_flight(server_factory: type[Server], tmp_path: Path) -> None:
    """Two instances, long streams on both, max_instance lowered to 1: every stream ends
    whole with ``[DONE]``, and one engine is left."""
    server = server_factory(
        data_dir=tmp_path / "data",
        engine_args=["--startup-delay-s", "0.2", *FIXED_PACE],
        # The scaler stays out of it: only the PUT changes the replicas.
        env={"AIF_SCALE_INTERVAL_S": "3600", "AIF_ROUTING_POLICY": "round-robin"},
    )
    server.start()
    name = _model_name()
    model = _register(server, name, min_instance=2, max_instance=2)
    wait_until(lambda: _get(server, model["id"])["ready_instances"] == 2)

    streams, tokens = 6, 300  # about 6 s each at 20 ms a token
    started = [threading.Event() for _ in range(streams)]
    with ThreadPoolExecutor(streams) as pool:
        futures = [pool.submit(_stream, server, name, tokens, ev) for ev in started]
        for ev in started:
            assert ev.wait(10), "a stream did not start"
        answer = httpx.put(
            f"{server.url}/v1/models/{model['id']}",
            json={"min_instance": 1, "max_instance": 1},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        # The removed instance has left the model while its streams still run.
        wait_until(lambda: _get(server, model["id"])["ready_instances"] == 1, timeout_s=5)
        assert len(engine_processes(name)) == 2
        results = [f.result(timeout=30) for f in futures]

    for result in results:
        assert result.status == 200, result.error
        assert result.done, f"stream cut after {result.tokens} tokens: {result.error}"
        assert result.tokens == tokens
        assert result.usage_tokens == tokens
    wait_until(lambda: len(engine_processes(name)) == 1, timeout_s=15)
    final = _get(server, model["id"])
    assert (final["status"], final["instances"], final["ready_instances"]) == ("ACTIVE", 1, 1)


def test_restart_status_is_honest_and_chat_is_held(
    server_factory: type[Server], tmp_path: Path
) -> None:
    """After SIGTERM and a restart on the same data dir: never ACTIVE with 0 ready, and a chat
    sent at once succeeds once an instance is ready."""
    server = server_factory(
        data_dir=tmp_path / "data",
        # Slow enough to start that the restart has a visible window with nothing ready.
        engine_args=["--startup-delay-s", "2", *FIXED_PACE],
        env={"AIF_SCALE_INTERVAL_S": "3600"},
    )
    server.start()
    name = _model_name()
    model = _register(server, name, min_instance=1, max_instance=1)
    wait_until(lambda: _get(server, model["id"])["status"] == "ACTIVE")

    server.kill(signal.SIGTERM)
    wait_until(lambda: not engine_processes(name), timeout_s=10)
    server.start()

    seen: list[tuple[str, int]] = []
    with ThreadPoolExecutor(1) as pool:
        chat = pool.submit(_stream, server, name, 8)
        while not chat.done():
            got = _get(server, model["id"])
            seen.append((got["status"], got["ready_instances"]))
            time.sleep(0.02)
        result = chat.result()

    assert result.status == 200, result.error
    assert result.done and result.tokens == 8
    assert seen, "the chat came back before the model could even be read"
    assert seen[0][1] == 0, f"the first read after restart already saw an instance: {seen[0]}"
    assert ("ACTIVE", 0) not in seen, seen
    # The chat was held across the engine's start-up, not answered by a left-over instance.
    assert result.first_token_s is not None and result.first_token_s > 1.0
    wait_until(lambda: _get(server, model["id"])["status"] == "ACTIVE", timeout_s=10)


def test_scale_to_zero_and_back(server_factory: type[Server], tmp_path: Path) -> None:
    """min_instance 0: idle, the model goes IDLE with no engine; a chat wakes it, is held
    while an instance starts, and is answered; the model is ACTIVE again."""
    startup_s = 1.0
    server = server_factory(
        data_dir=tmp_path / "data",
        engine_args=["--startup-delay-s", str(startup_s), *FIXED_PACE],
        env={
            "AIF_SCALE_INTERVAL_S": "0.5",
            "AIF_SCALE_WINDOW_S": "2",
            "AIF_SCALE_UPSCALE_DELAY_S": "1",
            "AIF_SCALE_DOWNSCALE_DELAY_S": "2",
            "AIF_LOG_LEVEL": "INFO",
        },
        idle_window_s=3,
    )
    server.start()
    name = _model_name()
    model = _register(server, name, min_instance=0, max_instance=1)
    if model["instances"] > 0:
        wait_until(lambda: _get(server, model["id"])["status"] == "ACTIVE")
        first = _stream(server, name, 4)
        assert first.done, first.error

    # Window (2 s) + idle window (3 s) + a few intervals: well within 15 s.
    began = time.monotonic()
    wait_until(lambda: _get(server, model["id"])["status"] == "IDLE", timeout_s=15)
    idle_after_s = time.monotonic() - began
    zero = _get(server, model["id"])
    assert (zero["instances"], zero["ready_instances"]) == (0, 0), zero
    assert zero["scaling"]["to_replicas"] == 0, zero["scaling"]
    # Stopped once drained: nothing in flight, but an idle keep-alive connection (the
    # deployer's own health probes) holds it until the engine closes it, about 5 s.
    wait_until(lambda: not engine_processes(name), timeout_s=10)

    result = _stream(server, name, 8)
    assert result.status == 200, result.error
    assert result.done and result.tokens == 8
    assert result.first_token_s is not None
    # Held while an engine started (its own start-up delay at least), then served promptly.
    assert startup_s < result.first_token_s < startup_s + 10
    print(f"idle to zero in {idle_after_s:.1f}s; first token from zero {result.first_token_s:.2f}s")
    back = wait_until(lambda: (m := _get(server, model["id"]))["status"] == "ACTIVE" and m)
    assert (back["instances"], back["ready_instances"]) == (1, 1)
    assert len(engine_processes(name)) == 1
