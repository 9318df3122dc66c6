"""Nested-JSON bombs (30,000 levels, 60 KB) get a 400 in the API's words on every route."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import register_body
from tests.e2e.conftest import Server

LEVELS = 30_000
BOMB = b'{"model": "m", "messages": ' + b"[" * LEVELS + b"]" * LEVELS + b"}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/models"),
        ("PUT", "/v1/models/some-model"),
    ],
)
def test_a_nested_json_bomb_is_400(server: Server, method: str, path: str) -> None:
    answer = httpx.request(
        method,
        f"{server.url}{path}",
        content=BOMB,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "deeper than 64 levels" in error["message"] and "AIF_MAX_JSON_DEPTH" in error["message"]


def test_ordinary_nesting_still_passes(server: Server) -> None:
    body = register_body(description='brackets in a string do not count: [[[[{{{{"' * 20)
    answer = httpx.post(f"{server.url}/v1/models", json=body, timeout=10)
    assert answer.status_code == 201, answer.text
