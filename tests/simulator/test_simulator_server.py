"""The simulator's HTTP API in-process (httpx.ASGITransport): shapes, errors, faults, health."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from simulator import EngineConfig, Faults, build_app

MODEL = "tiny"
CONFIG = EngineConfig(
    served_model_name=MODEL,
    max_num_seqs=4,
    max_num_batched_tokens=256,
    max_model_len=512,
    block_size=16,
    kv_cache_blocks=128,
    prefill_ms_per_token=0.001,
    decode_step_base_ms=0.1,
    decode_ms_per_running_seq=0.01,
)


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            yield client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async for c in serve(build_app(CONFIG, Faults(), startup_delay_s=0.0, seed=7)):
        yield c


def chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi!"}]}
    body.update(overrides)
    return body


def sse_payloads(text: str) -> list[Any]:
    frames = [frame for frame in text.split("\n\n") if frame]
    assert all(frame.startswith("data: ") for frame in frames)
    return [frame[6:] if frame == "data: [DONE]" else json.loads(frame[6:]) for frame in frames]


async def test_chat_completion_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=chat(max_tokens=5))
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == MODEL and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 5 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


async def test_completion_shape_and_token_id_prompts(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 3, "ignore_eos": True}
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["id"].startswith("cmpl-") and data["object"] == "text_completion"
    assert data["choices"][0]["text"] and data["choices"][0]["finish_reason"] == "length"
    ids = await client.post("/v1/completions", json={"prompt": list(range(40)), "max_tokens": 2})
    assert ids.json()["usage"]["prompt_tokens"] == 40


async def test_chat_stream_shape(client: httpx.AsyncClient) -> None:
    body = chat(max_tokens=4, stream=True, stream_options={"include_usage": True})
    response = await client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    *chunks, done = sse_payloads(response.text)
    assert done == "[DONE]"
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:5]]
    assert len(contents) == 4 and all(contents)
    assert chunks[5]["choices"][0]["finish_reason"] == "length"
    assert chunks[6]["choices"] == [] and chunks[6]["usage"]["completion_tokens"] == 4


async def test_completion_stream_without_usage(client: httpx.AsyncClient) -> None:
    body = {"prompt": "abc", "max_tokens": 3, "stream": True}
    response = await client.post("/v1/completions", json=body)
    *chunks, done = sse_payloads(response.text)
    assert done == "[DONE]" and len(chunks) == 4
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert "usage" not in chunks[-1] and chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_lengths_are_deterministic_and_some_requests_stop(
    client: httpx.AsyncClient,
) -> None:
    async def answer(seed: int) -> tuple[str, str, int]:
        response = await client.post("/v1/chat/completions", json=chat(seed=seed, max_tokens=24))
        body = response.json()
        choice = body["choices"][0]
        return (
            choice["message"]["content"],
            choice["finish_reason"],
            body["usage"]["completion_tokens"],
        )

    answers = [await answer(seed) for seed in range(4)]
    assert answers == [await answer(seed) for seed in range(4)]
    assert all(16 <= tokens <= 24 for _, _, tokens in answers)
    assert "stop" in {reason for _, reason, _ in answers}
    unbounded = await client.post("/v1/completions", json={"prompt": "tell me", "seed": 1})
    assert 16 <= unbounded.json()["usage"]["completion_tokens"] <= 64  # the default max_tokens


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        (chat(model="other"), 404, "model", "`other` does not exist"),
        ({"model": MODEL}, 400, "messages", "messages: Field required"),
        (chat(messages=[]), 400, "messages", "at least 1 item"),
        (chat(max_tokens=0), 400, "max_tokens", "greater than or equal to 1"),
        (chat(n=2), 400, None, "only n=1"),
        (chat(messages=[{"role": "user", "content": "x" * 4000}]), 400, "messages", "context"),
    ],
)
async def test_bad_requests_get_openai_errors(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str | None, fragment: str
) -> None:
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and error["param"] == param
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert fragment in error["message"]


async def test_unknown_fields_pass_and_bodies_must_be_json(client: httpx.AsyncClient) -> None:
    ok = await client.post("/v1/chat/completions", json=chat(max_tokens=1, top_k=5, foo="bar"))
    assert ok.status_code == 200
    broken = await client.post("/v1/completions", content=b"{not json")
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]


async def test_models_lists_the_served_name(client: httpx.AsyncClient) -> None:
    data = (await client.get("/v1/models")).json()
    assert data["object"] == "list"
    (model,) = data["data"]
    assert model["id"] == MODEL and model["owned_by"] == "aif-simulator"
    assert model["max_model_len"] == 512


async def test_error_rate_one_fails_every_request() -> None:
    async for client in serve(build_app(CONFIG, Faults(error_rate=1.0))):
        for stream in (False, True):
            response = await client.post("/v1/chat/completions", json=chat(stream=stream))
            assert response.status_code == 500
            assert response.json()["error"]["type"] == "internal_error"


async def test_health_waits_for_the_startup_delay() -> None:
    clock = ManualClock()
    async for client in serve(build_app(CONFIG, startup_delay_s=5.0, clock=clock)):
        assert (await client.get("/health")).status_code == 503
        starting = await client.post("/v1/chat/completions", json=chat())
        assert starting.status_code == 503 and starting.json()["error"]["code"] == 503
        clock.now += 5.0
        assert (await client.get("/health")).status_code == 200


async def test_admin_faults_change_behaviour_at_run_time(client: httpx.AsyncClient) -> None:
    assert (await client.get("/admin/faults")).json() == {
        "error_rate": 0.0,
        "stall_after_tokens": None,
        "healthy": True,
    }
    changed = await client.post("/admin/faults", json={"healthy": False, "error_rate": 1.0})
    assert changed.json()["healthy"] is False
    assert (await client.get("/health")).status_code == 503
    assert (await client.post("/v1/chat/completions", json=chat())).status_code == 500
    await client.post("/admin/faults", json={"healthy": True, "error_rate": 0})
    assert (await client.get("/health")).status_code == 200
    invalid = await client.post("/admin/faults", json={"error_rate": 2})
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "error_rate"


async def test_metrics_are_served_in_prometheus_text(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=chat(max_tokens=2))
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert f'vllm:generation_tokens_total{{model_name="{MODEL}"}} 2.0' in response.text
