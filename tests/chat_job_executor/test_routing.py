"""The chat-job-executor's routing, against a real store and an instance faked at HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.chat_job_executor import ChatJobExecutor
from api.errors import ModelNotFound, ModelNotReady, UpstreamError
from api.store.sqlite import SqliteModelStore
from domain.records import Endpoint, ModelRecord, ModelStatus, Pvc, Slo


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteModelStore]:
    s = SqliteModelStore(tmp_path / "aif.db")
    yield s
    s.close()


def _record(name: str, status: ModelStatus, ports: list[int]) -> ModelRecord:
    return ModelRecord(
        name=name, type="QwQ-32B", resource_type="huawei.com/ascend-1980",
        max_instance=4, min_instance=1, replicas=len(ports), status=status,
        pvc=Pvc(name="release-models", path="Qwen/QwQ-32B"),
        slo=Slo(target_time_to_first_token_p95=1000, target_time_per_output_token_p95=20),
        endpoints=[Endpoint(instance_id=str(p), url=f"http://127.0.0.1:{p}") for p in ports],
    )  # fmt: skip


def _gateway(store: SqliteModelStore, seen: list[str], down: set[int]) -> ChatJobExecutor:
    def instance(request: httpx.Request) -> httpx.Response:
        port = request.url.port
        assert port is not None
        if port in down:
            raise httpx.ConnectError("connection refused", request=request)
        seen.append(f"{port}{request.url.path}")
        return httpx.Response(200, json={"served_by": port, **json.loads(request.content)})

    client = httpx.AsyncClient(transport=httpx.MockTransport(instance))
    # A refresh interval far longer than the test: only the miss path can see new models.
    return ChatJobExecutor(store, refresh_interval_s=3600, upstream_timeout_s=5, client=client)


async def _body(gateway: ChatJobExecutor, request: dict[str, object]) -> dict[str, object]:
    upstream = await gateway.forward("/v1/chat/completions", request, json.dumps(request).encode())
    chunks = [chunk async for chunk in upstream.body()]
    answer: dict[str, object] = json.loads(b"".join(chunks))
    return answer


async def test_a_model_that_just_became_active_routes_at_once(store: SqliteModelStore) -> None:
    seen: list[str] = []
    gateway = _gateway(store, seen, down=set())
    await gateway.refresh()  # the table is now empty
    store.create(_record("fresh", ModelStatus.ACTIVE, [9001]))
    answer = await _body(gateway, {"model": "fresh", "messages": [], "extra_field": 1})
    assert answer["served_by"] == 9001
    assert answer["extra_field"] == 1  # the body passes through untouched
    assert seen == ["9001/v1/chat/completions"]
    await gateway.stop()


async def test_requests_rotate_over_instances(store: SqliteModelStore) -> None:
    seen: list[str] = []
    store.create(_record("m", ModelStatus.ACTIVE, [9001, 9002]))
    gateway = _gateway(store, seen, down=set())
    await gateway.refresh()
    served = [(await _body(gateway, {"model": "m"}))["served_by"] for _ in range(4)]
    assert sorted(served) == [9001, 9001, 9002, 9002]
    await gateway.stop()


async def test_an_unreachable_instance_is_skipped_before_the_first_byte(
    store: SqliteModelStore,
) -> None:
    seen: list[str] = []
    store.create(_record("m", ModelStatus.ACTIVE, [9001, 9002]))
    gateway = _gateway(store, seen, down={9001})
    await gateway.refresh()
    for _ in range(3):
        assert (await _body(gateway, {"model": "m"}))["served_by"] == 9002
    await gateway.stop()


async def test_all_instances_unreachable_is_a_502(store: SqliteModelStore) -> None:
    store.create(_record("m", ModelStatus.ACTIVE, [9001]))
    gateway = _gateway(store, [], down={9001})
    with pytest.raises(UpstreamError, match="could be reached"):
        await _body(gateway, {"model": "m"})
    await gateway.stop()


async def test_unknown_model_names_the_available_ones(store: SqliteModelStore) -> None:
    store.create(_record("alpha", ModelStatus.ACTIVE, [9001]))
    store.create(_record("beta", ModelStatus.DEPLOYING, []))
    gateway = _gateway(store, [], down=set())
    with pytest.raises(ModelNotFound, match="available models: alpha, beta"):
        await _body(gateway, {"model": "gamma"})
    await gateway.stop()


async def test_a_deploying_model_is_not_ready(store: SqliteModelStore) -> None:
    store.create(_record("beta", ModelStatus.DEPLOYING, []))
    gateway = _gateway(store, [], down=set())
    with pytest.raises(ModelNotReady, match="DEPLOYING"):
        await _body(gateway, {"model": "beta"})
    await gateway.stop()


async def test_an_updating_model_keeps_serving(store: SqliteModelStore) -> None:
    store.create(_record("m", ModelStatus.UPDATING, [9001]))
    gateway = _gateway(store, [], down=set())
    assert (await _body(gateway, {"model": "m"}))["served_by"] == 9001
    await gateway.stop()
