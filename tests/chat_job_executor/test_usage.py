"""Usage per key: answered requests on real servers, then ``GET /v1/usage`` and ``/metrics``.

The scripted engine reports 3 prompt and 4 completion tokens per answer. The gateway runs
the frontend and the chat-job-executor in one process (``aif serve``'s layout), flushing
usage every 50 ms; a test waits for the flush rather than sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import Role, create_app
from domain.settings import Settings
from tests.chat_job_executor.conftest import Gateway, model_record
from tests.chat_job_executor.test_keys import ADMIN, bearer, chat, make_key
from tests.conftest import free_port

SERVED = frozenset({Role.FRONTEND, Role.CHAT_JOB_EXECUTOR})


@pytest.fixture
async def served(engines: Any, gateway: Any) -> Gateway:
    [engine] = await engines(1, tokens=4)
    gw: Gateway = await gateway(SERVED, admin_key=ADMIN, usage_flush_s=0.05, metrics_per_key=True)
    gw.store.create(model_record("m1", [engine]))
    gw.store.create(model_record("m2", [engine]))
    return gw


async def usage(gw: Gateway, secret: str, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(gw.url + "/v1/usage", params=params, headers=bearer(secret))


async def flushed(gw: Gateway, requests: int) -> None:
    for _ in range(300):
        if sum(b.requests for b in gw.store.usage()) >= requests:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"usage of {requests} requests never reached the store")


async def test_answered_requests_are_reported_per_key_model_and_hour(served: Gateway) -> None:
    team, team_id = make_key(served, name="team-a")
    other, other_id = make_key(served, name="team-b")
    for secret, model in [(team, "m1"), (team, "m1"), (team, "m2"), (other, "m1")]:
        assert (await chat(served, model, secret)).status_code == 200
    assert (await chat(served, "m1", team, stream=True)).status_code == 200
    assert (await chat(served, "ghost", team)).status_code == 404  # not answered: not counted
    await flushed(served, 5)

    report = (await usage(served, ADMIN)).json()

    assert report["object"] == "list" and report["group_by"] == ["key", "model"]
    # An empty group_by asks for nothing more: the default grouping.
    assert (await usage(served, ADMIN, group_by="")).json()["group_by"] == ["key", "model"]
    rows = {(r["key_name"], r["model"]): r for r in report["data"]}
    assert set(rows) == {("team-a", "m1"), ("team-a", "m2"), ("team-b", "m1")}
    assert rows["team-a", "m1"] == {
        "key_id": team_id, "key_name": "team-a", "model": "m1", "requests": 3,
        "prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
    }  # fmt: skip
    assert report["totals"] == {
        "requests": 5, "prompt_tokens": 15, "completion_tokens": 20, "total_tokens": 35,
    }  # fmt: skip
    by_hour = (await usage(served, ADMIN, group_by="hour", key=other_id)).json()
    [hour] = by_hour["data"]
    assert set(hour) == {"hour", "requests", "prompt_tokens", "completion_tokens", "total_tokens"}
    assert hour["hour"].endswith(":00:00.000Z") and hour["requests"] == 1
    by_model = (await usage(served, ADMIN, group_by=["model", "hour"], model="m2")).json()
    assert [(r["model"], r["requests"]) for r in by_model["data"]] == [("m2", 1)]
    future = (await usage(served, ADMIN, **{"from": "2999-01-01", "to": "2999-01-02"})).json()
    assert future["data"] == [] and future["totals"]["requests"] == 0
    assert future["from"] == "2999-01-01T00:00:00.000Z"


async def test_an_inference_key_sees_only_its_own_usage(served: Gateway) -> None:
    team, team_id = make_key(served, name="team-a")
    other, other_id = make_key(served, name="team-b")
    assert (await chat(served, "m1", team)).status_code == 200
    assert (await chat(served, "m1", other)).status_code == 200
    await flushed(served, 2)

    own = (await usage(served, team)).json()
    named = (await usage(served, team, key=team_id)).json()
    refused = await usage(served, team, key=other_id)

    assert [r["key_id"] for r in own["data"]] == [team_id] == [r["key_id"] for r in named["data"]]
    assert own["totals"]["requests"] == 1
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["type"] == "permission_error" and error["param"] == "key"
    assert other_id in error["message"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"to": "1900-01-01"}, "to"),
        ({"to": "9999-12-31T23:00-05:00"}, "to"),
        ({"from": "2026-03-02", "to": "2026-03-01"}, "from"),
        ({"group_by": "key,team"}, "group_by"),
    ],
)
async def test_a_bad_query_is_422_naming_the_parameter(
    served: Gateway, params: dict[str, str], param: str
) -> None:
    answer = await usage(served, ADMIN, **params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == param


async def test_tokens_are_on_metrics_per_model_and_per_key(served: Gateway) -> None:
    team, team_id = make_key(served, name="team-a")
    assert (await chat(served, "m1", team)).status_code == 200
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(served.url + "/metrics")).text
    assert 'aif_tokens_total{kind="prompt",model="m1"} 3.0' in text
    assert 'aif_tokens_total{kind="completion",model="m1"} 4.0' in text
    assert f'aif_key_tokens_total{{key="{team_id}",kind="completion",model="m1"}} 4.0' in text
    assert f'aif_key_requests_total{{key="{team_id}",model="m1"}} 1.0' in text


async def test_a_forwarding_frontend_does_not_count_what_the_executor_counts(
    served: Gateway, tmp_path: Any
) -> None:
    team, _ = make_key(served, name="team-a")
    settings = Settings(
        data_dir=tmp_path / "frontend", admin_key=ADMIN, chat_executor_url=served.url,
        usage_flush_s=0.05,
    )  # fmt: skip
    app = create_app(settings, frozenset({Role.FRONTEND}), store=served.store)
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
            body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
            assert (await client.post(url, json=body, headers=bearer(team))).status_code == 200
        await flushed(served, 1)
        await asyncio.sleep(0.2)  # a second count, had the frontend made one, would be in
    finally:
        server.should_exit = True
        await task
    assert [b.requests for b in served.store.usage()] == [1]
