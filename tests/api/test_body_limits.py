"""Body limits per surface: small model documents, long prompts."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from api.relay import Exchange
from tests.conftest import register_body

KIB = 1024
MIB = 1024 * KIB


class _EchoLength:
    """An inference backend that answers with the size of the body it was given."""

    def __init__(self) -> None:
        self.received: list[int] = []

    async def serve(
        self, exchange: Exchange, path: str, request: dict[str, Any], body: bytes
    ) -> None:
        self.received.append(len(body))
        await exchange.answer_json(200, {"bytes": len(body)})


def _chat(prompt_bytes: int) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * prompt_bytes}]}
    return json.dumps(body).encode()


def _echo(client: TestClient) -> _EchoLength:
    echo = _EchoLength()
    client.app.state.inference = echo  # type: ignore[attr-defined]
    return echo


def test_a_200_kib_prompt_reaches_the_model(client: TestClient) -> None:
    echo = _echo(client)
    body = _chat(200 * KIB)
    response = client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert echo.received == [len(body)]


def test_a_20_mib_prompt_is_413_naming_the_inference_limit(client: TestClient) -> None:
    echo = _echo(client)
    response = client.post(
        "/v1/completions", content=_chat(20 * MIB), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 413
    assert f"{16 * MIB} bytes" in error["message"]
    assert "AIF_MAX_INFERENCE_BODY_BYTES" in error["message"]
    assert echo.received == []


def test_a_chunked_20_mib_prompt_is_413(client: TestClient) -> None:
    echo = _echo(client)

    def chunks() -> Any:
        body = _chat(20 * MIB)
        for start in range(0, len(body), MIB):
            yield body[start : start + MIB]

    response = client.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert echo.received == []


def test_a_100_kib_registration_is_413_naming_the_api_limit(client: TestClient) -> None:
    response = client.post("/v1/models", json=register_body(description="x" * 100 * KIB))
    assert response.status_code == 413
    message = response.json()["error"]["message"]
    assert f"{64 * KIB} bytes" in message and "AIF_MAX_BODY_BYTES" in message
    assert client.get("/v1/models").json()["models"] == []
