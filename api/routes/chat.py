"""``/v1/chat/completions`` and ``/v1/completions``: OpenAI-compatible inference.

The body passes through to the instance untouched (unknown fields included); the route only
reads ``model`` to pick the route, and streams the instance's answer back as it arrives.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect

from api.deps import InferenceDep
from api.errors import InvalidRequest, MalformedBody

router = APIRouter(prefix="/v1", tags=["inference"])

# nginx's code for a request whose client went away before the answer; nobody receives it.
CLIENT_CLOSED_REQUEST = 499


async def _proxy(path: str, request: Request, inference: InferenceDep) -> Response:
    try:
        body = await request.body()
    except ClientDisconnect:
        # Gone mid-body, or its body was refused as too large (already answered with 413).
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    try:
        payload: Any = json.loads(body)
    except ValueError as exc:
        raise MalformedBody(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    upstream = await inference.forward(path, payload, body)
    return StreamingResponse(
        upstream.body(), status_code=upstream.status_code, headers=upstream.headers
    )


@router.post("/chat/completions")
async def chat_completions(request: Request, inference: InferenceDep) -> Response:
    """OpenAI chat completions, streamed (``"stream": true``) or whole."""
    return await _proxy("/v1/chat/completions", request, inference)


@router.post("/completions")
async def completions(request: Request, inference: InferenceDep) -> Response:
    """OpenAI text completions, streamed or whole."""
    return await _proxy("/v1/completions", request, inference)
