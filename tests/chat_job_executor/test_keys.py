"""API keys on the inference fast path: real servers on loopback, the ``openai`` client too.

Keys are made with :class:`api.services.keys.KeyService` on the gateway's own store and ring,
as ``POST /v1/keys`` does in a frontend. Limits run on a fake clock.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from api.app import Role, create_app
from api.schemas import KeyCreate
from api.services.keys import KeyService
from domain.records import ModelStatus
from domain.settings import Settings
from tests.chat_job_executor.conftest import Gateway, model_record
from tests.conftest import free_port

ADMIN = "sk-aif-bootstrap-admin-for-tests-0123456789"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_key(gw: Gateway, **fields: Any) -> tuple[str, str]:
    """A key's (secret, id)."""
    body = KeyCreate.model_validate({"name": "app", "scope": "inference", **fields})
    key, secret = KeyService(gw.store, gw.state.keys).create(body, "test")
    return secret, key.id


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def chat(gw: Gateway, model: str, secret: str | None, **extra: Any) -> httpx.Response:
    headers = bearer(secret) if secret else {}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            gw.url + "/v1/chat/completions", json={"model": model, **CHAT, **extra}, headers=headers
        )


@pytest.fixture
async def keyed(engines: Any, gateway: Any) -> Gateway:
    [engine] = await engines(1, tokens=4)
    gw: Gateway = await gateway(admin_key=ADMIN)
    gw.store.create(model_record("m1", [engine]))
    gw.store.create(model_record("m2", [engine]))
    return gw


async def test_inference_needs_a_valid_key(keyed: Gateway) -> None:
    missing = await chat(keyed, "m1", None)
    wrong = await chat(keyed, "m1", ADMIN + "x")
    for answer in (missing, wrong):
        assert answer.status_code == 401
        error = answer.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (await chat(keyed, "m1", ADMIN)).status_code == 200


async def test_a_revoked_key_is_refused_on_the_next_request(keyed: Gateway) -> None:
    secret, key_id = make_key(keyed)
    assert (await chat(keyed, "m1", secret)).status_code == 200

    KeyService(keyed.store, keyed.state.keys).revoke(key_id, "test")

    assert (await chat(keyed, "m1", secret)).status_code == 401


async def test_a_key_serves_only_its_models_and_a_404_names_no_other(keyed: Gateway) -> None:
    secret, _ = make_key(keyed, models=["m1", "ghost"])

    assert (await chat(keyed, "m1", secret)).status_code == 200
    refused = await chat(keyed, "m2", secret)
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    assert "m2" in refused.json()["error"]["message"]
    unknown = await chat(keyed, "ghost", secret)
    assert unknown.status_code == 404
    assert "m1" not in unknown.text and "m2" not in unknown.text


async def test_requests_per_minute_are_refused_with_retry_after(keyed: Gateway) -> None:
    clock = FakeClock()
    keyed.state.limits.clock = clock
    secret, _ = make_key(keyed, rpm=2)

    assert [(await chat(keyed, "m1", secret)).status_code for _ in range(2)] == [200, 200]
    refused = await chat(keyed, "m1", secret)
    assert refused.status_code == 429
    # A sliding minute: both requests leave it once their slot is more than 60 s old.
    assert refused.headers["retry-after"] == "61"
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and "2 requests per minute" in error["message"]
    clock.now += 60
    assert (await chat(keyed, "m1", secret)).status_code == 429
    clock.now += 1
    assert (await chat(keyed, "m1", secret)).status_code == 200


async def test_tokens_per_minute_count_the_usage_of_whole_and_streamed_answers(
    keyed: Gateway,
) -> None:
    clock = FakeClock()
    keyed.state.limits.clock = clock
    # The engine's usage: 3 prompt tokens and 4 completion tokens, 7 in all, either way.
    secret, _ = make_key(keyed, tpm=14)

    assert (await chat(keyed, "m1", secret)).status_code == 200  # 7 used
    clock.now += 30
    streamed = await chat(keyed, "m1", secret, stream=True)
    assert streamed.status_code == 200 and "[DONE]" in streamed.text  # 14 used
    refused = await chat(keyed, "m1", secret)
    assert refused.status_code == 429
    assert "14 tokens per minute" in refused.json()["error"]["message"]
    # Below 14 again once the first answer's 7 leave the minute, 31 s from now.
    assert refused.headers["retry-after"] == "31"
    clock.now += 31
    assert (await chat(keyed, "m1", secret)).status_code == 200


async def test_a_used_up_budget_is_insufficient_quota_until_the_day_ends(keyed: Gateway) -> None:
    clock = FakeClock()
    clock.now = datetime(2026, 3, 1, 23, 59, tzinfo=UTC).timestamp()
    keyed.state.limits.clock = clock
    secret, _ = make_key(keyed, token_budget=14, budget_period="day")

    assert [(await chat(keyed, "m1", secret)).status_code for _ in range(2)] == [200, 200]
    refused = await chat(keyed, "m1", secret)

    assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "14 tokens this day" in error["message"]
    assert "resets at 2026-03-02T00:00:00Z" in error["message"]
    client = openai.AsyncOpenAI(base_url=keyed.url + "/v1", api_key=secret, max_retries=0)
    try:
        with pytest.raises(openai.RateLimitError) as raised:
            await client.completions.create(model="m1", prompt="hi", max_tokens=4)
    finally:
        await client.close()
    assert raised.value.code == "insufficient_quota"
    clock.now += 60
    assert (await chat(keyed, "m1", secret)).status_code == 200


async def test_the_openai_client_sends_its_api_key(keyed: Gateway) -> None:
    secret, _ = make_key(keyed, models=["m1"])
    client = openai.AsyncOpenAI(base_url=keyed.url + "/v1", api_key=secret, max_retries=0)
    try:
        answer = await client.completions.create(model="m1", prompt="hi", max_tokens=4)
        assert answer.usage is not None and answer.usage.total_tokens == 7
        with pytest.raises(openai.PermissionDeniedError):
            await client.completions.create(model="m2", prompt="hi", max_tokens=4)
        wrong = openai.AsyncOpenAI(base_url=keyed.url + "/v1", api_key="sk-no", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await wrong.completions.create(model="m1", prompt="hi", max_tokens=4)
        await wrong.close()
    finally:
        await client.close()


async def test_a_frontend_passes_the_key_on_to_the_chat_job_executor(
    keyed: Gateway, tmp_path: Any
) -> None:
    secret, _ = make_key(keyed, models=["m1"])
    settings = Settings(
        data_dir=tmp_path / "frontend", admin_key=ADMIN, chat_executor_url=keyed.url
    )
    app = create_app(settings, frozenset({Role.FRONTEND}), store=keyed.store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with httpx.AsyncClient(timeout=10) as client:
            ok = await client.post(url, json={"model": "m1", **CHAT}, headers=bearer(secret))
            refused = await client.post(url, json={"model": "m2", **CHAT}, headers=bearer(secret))
            anonymous = await client.post(url, json={"model": "m1", **CHAT})
    finally:
        server.should_exit = True
        await task
    assert ok.status_code == 200
    assert refused.status_code == 403
    assert anonymous.status_code == 401


async def test_a_forwarded_request_is_counted_once_by_the_chat_job_executor(
    keyed: Gateway, tmp_path: Any
) -> None:
    secret, _ = make_key(keyed, rpm=2)
    settings = Settings(
        data_dir=tmp_path / "frontend", admin_key=ADMIN, chat_executor_url=keyed.url
    )
    app = create_app(settings, frozenset({Role.FRONTEND}), store=keyed.store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    codes = []
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(3):
                answer = await client.post(
                    url, json={"model": "m1", **CHAT}, headers=bearer(secret)
                )
                codes.append(answer.status_code)
                # Both processes' counts in the shared store, as their syncs would put them.
                await app.state.limits.counters.sync()
                await keyed.state.limits.counters.sync()
    finally:
        server.should_exit = True
        await task
    assert codes == [200, 200, 429]


async def test_waking_a_model_scaled_to_zero_is_recorded(gateway: Any) -> None:
    gw: Gateway = await gateway(hold_timeout_s=0.2)
    idle = gw.store.create(
        model_record("m", [], status=ModelStatus.IDLE, replicas=0, min_instance=0)
    )

    answer = await chat(gw, "m", None)

    assert answer.status_code == 503  # nothing starts the instance here
    [event] = gw.store.events(idle.id)
    assert (event.actor, event.action) == ("chat-job-executor", "model.scale")
    assert event.changes == {"replicas": {"from": 0, "to": 1}}
