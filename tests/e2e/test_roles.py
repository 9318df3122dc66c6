"""Each role in a process of its own, sharing one data dir, as the install program runs them.

The frontend forwards inference to the chat-job-executor (``AIF_CHAT_EXECUTOR_URL``), the
model-job-executor starts the engines, and the task-executor-manager watches them; the product
walkthrough (register → ACTIVE → chat → delete) holds across the four processes.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import register_body, wait_until
from tests.e2e.conftest import Server, engine_processes

pytestmark = pytest.mark.slow


def _get(frontend: Server, ref: str) -> httpx.Response:
    return httpx.get(f"{frontend.url}/v1/models/{ref}")


def _walkthrough(frontend: Server, executor: Server) -> None:
    name = f"roles-{uuid.uuid4().hex[:8]}"
    body = register_body(name=name, min_instance=1, max_instance=2)
    created = httpx.post(f"{frontend.url}/v1/models", json=body)
    assert created.status_code == 201, created.text
    model_id = created.json()["model"]["id"]
    wait_until(lambda: _get(frontend, model_id).json()["model"]["status"] == "ACTIVE")
    assert [p.pid for p in engine_processes(name)] == [p.pid for p in executor.engines()]

    client = openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    stream = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hello"}], max_tokens=3, stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    assert httpx.delete(f"{frontend.url}/v1/models/{model_id}").status_code == 202
    wait_until(lambda: _get(frontend, model_id).status_code == 404)
    wait_until(lambda: not engine_processes(name))


def _start(server_factory: type[Server], data_dir: Path, command: str, **env: str) -> Server:
    server = server_factory(data_dir=data_dir, command=command, env=env)
    server.start()
    return server


def test_four_roles_in_four_processes(server_factory: type[Server], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    executor = _start(server_factory, data_dir, "model-job-executor")
    chat = _start(server_factory, data_dir, "chat-job-executor")
    _start(server_factory, data_dir, "task-executor-manager")
    frontend = _start(server_factory, data_dir, "frontend", AIF_CHAT_EXECUTOR_URL=chat.url)

    # Each role serves its own routes only.
    for role in (executor, chat):
        assert httpx.get(f"{role.url}/v1/models").status_code == 404
    assert httpx.post(f"{executor.url}/v1/chat/completions", json={}).status_code == 404

    _walkthrough(frontend, executor)


def test_frontend_without_a_chat_executor_url_serves_inference_itself(
    server_factory: type[Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    executor = _start(server_factory, data_dir, "model-job-executor")
    frontend = _start(server_factory, data_dir, "frontend")
    _walkthrough(frontend, executor)


def test_an_unreachable_chat_executor_is_a_502_that_says_so(
    server_factory: type[Server], tmp_path: Path
) -> None:
    gone = "http://127.0.0.1:9"  # the discard port: nothing listens there
    frontend = _start(server_factory, tmp_path / "data", "frontend", AIF_CHAT_EXECUTOR_URL=gone)
    response = httpx.post(
        f"{frontend.url}/v1/chat/completions", json={"model": "m", "messages": []}
    )
    assert response.status_code == 502
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert "chat-job-executor" in error["message"] and gone in error["message"]
