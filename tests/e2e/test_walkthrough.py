"""The product walkthrough against a real ``aif serve`` with simulator engines.

Register, watch it become ACTIVE, chat (streaming and not, with the official ``openai``
client), raise ``max_instance``, delete; then the failure stories: ``kill -9`` of the server
mid-deploy, restart, and the model ends ACTIVE with exactly its instances and no orphans.
"""

from __future__ import annotations

import signal
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import register_body, wait_until
from tests.e2e.conftest import Server, engine_processes

pytestmark = pytest.mark.slow


def _model_name() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


def _get(server: Server, ref: str) -> dict[str, Any]:
    model: dict[str, Any] = httpx.get(f"{server.url}/v1/models/{ref}").json()["model"]
    return model


def _register(server: Server, name: str, **overrides: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/v1/models",
        json=register_body(**{"name": name, "max_instance": 4, "min_instance": 2, **overrides}),
    )
    assert response.status_code == 201, response.text
    model: dict[str, Any] = response.json()["model"]
    return model


def test_walkthrough_with_openai_client(server: Server) -> None:
    name = _model_name()
    model = _register(server, name)
    assert model["status"] == "DEPLOYING"
    wait_until(lambda: _get(server, model["id"])["status"] == "ACTIVE")
    assert len(engine_processes(name)) == 2

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    listed = [m.id for m in client.models.list()]
    assert name in listed

    reply = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "How many r's in strawberry?"}]
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "Count to five."}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=12,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1

    completion = client.completions.create(model=name, prompt="Once upon a time", max_tokens=5)
    assert completion.choices[0].text

    updated = httpx.put(f"{server.url}/v1/models/{model['id']}", json={"max_instance": 6})
    assert updated.json()["model"]["max_instance"] == 6
    assert updated.json()["model"]["status"] == "ACTIVE"

    assert httpx.delete(f"{server.url}/v1/models/{model['id']}").status_code == 202
    wait_until(lambda: httpx.get(f"{server.url}/v1/models/{model['id']}").status_code == 404)
    wait_until(lambda: not engine_processes(name))


def test_an_unknown_model_is_a_404_that_names_no_other_model(server: Server) -> None:
    name = _model_name()
    _register(server, name)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "'nope' does not exist" in str(caught.value)
    assert name not in str(caught.value)


def test_model_not_ready_within_the_hold_is_503(
    server_factory: type[Server], tmp_path: Any
) -> None:
    server = server_factory(
        data_dir=tmp_path / "slow",
        engine_args=["--startup-delay-s", "30"],
        env={"AIF_HOLD_TIMEOUT_S": "1"},
    )
    server.start()
    name = _model_name()
    _register(server, name)
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    message = response.json()["error"]["message"]
    assert "no instance ready after 1s" in message and "DEPLOYING" in message


def test_a_request_during_a_deploy_is_held_and_served(
    server_factory: type[Server], tmp_path: Any
) -> None:
    server = server_factory(data_dir=tmp_path / "held", engine_args=["--startup-delay-s", "1"])
    server.start()
    name = _model_name()
    _register(server, name)
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


def test_kill_9_mid_deploy_then_restart_ends_active(
    server_factory: type[Server], tmp_path: Any
) -> None:
    data_dir = tmp_path / "crash"
    first = server_factory(data_dir=data_dir, engine_args=["--startup-delay-s", "2"])
    first.start()
    name = _model_name()
    model = _register(first, name)
    wait_until(lambda: len(engine_processes(name)) == 2)
    assert _get(first, model["id"])["status"] == "DEPLOYING"

    first.kill(signal.SIGKILL)
    wait_until(lambda: not engine_processes(name))  # no orphans

    second = server_factory(data_dir=data_dir, engine_args=["--startup-delay-s", "0.2"])
    second.start()
    restored = _get(second, model["id"])
    assert restored["name"] == name  # survived the restart
    wait_until(lambda: _get(second, model["id"])["status"] == "ACTIVE")
    assert len(engine_processes(name)) == 2
    assert _get(second, model["id"])["ready_instances"] == 2


def test_sigterm_stops_every_engine(server_factory: type[Server], tmp_path: Any) -> None:
    server = server_factory(data_dir=tmp_path / "term", engine_args=["--startup-delay-s", "0"])
    server.start()
    name = _model_name()
    model = _register(server, name)
    wait_until(lambda: _get(server, model["id"])["status"] == "ACTIVE")
    server.kill(signal.SIGTERM)
    wait_until(lambda: not engine_processes(name))


def test_engine_crash_is_replaced(server: Server) -> None:
    name = _model_name()
    model = _register(server, name)
    wait_until(lambda: _get(server, model["id"])["status"] == "ACTIVE")
    victim = engine_processes(name)[0]
    victim.kill()
    wait_until(lambda: victim.pid not in {p.pid for p in engine_processes(name)})
    wait_until(lambda: len(engine_processes(name)) == 2)
    wait_until(lambda: _get(server, model["id"])["ready_instances"] == 2)


def _engine_metrics(name: str) -> str:
    (engine,) = engine_processes(name)
    cmdline = engine.cmdline()
    port = cmdline[cmdline.index("--port") + 1]
    return httpx.get(f"http://127.0.0.1:{port}/metrics").text


def _sample(metrics: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(prefix))  # fmt: skip


def test_stream_is_not_buffered_and_a_gone_client_cancels_the_engine(server: Server) -> None:
    name = _model_name()
    model = _register(server, name, min_instance=1)
    wait_until(lambda: _get(server, model["id"])["status"] == "ACTIVE")
    body = {
        "model": name,
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 4000,
        "ignore_eos": True,
        "stream": True,
    }
    # 4000 tokens take the engine about a minute: chunks that arrive within the read timeout
    # were forwarded as they came, not after the whole answer.
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, timeout=10
    ) as response:
        assert response.status_code == 200
        contents = 0
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                contents += 1
            if contents == 3:
                assert _sample(_engine_metrics(name), "vllm:num_requests_running{") == 1
                break
        assert contents == 3
    wait_until(lambda: _sample(_engine_metrics(name), "vllm:num_requests_running{") == 0)
    aborted = 'vllm:request_success_total{finished_reason="abort"'
    assert _sample(_engine_metrics(name), aborted) == 1
