"""``/v1/chat/completions`` and ``/v1/completions``: OpenAI-compatible inference.

These two routes are plain ASGI endpoints, not FastAPI handlers: they are the hot path, and an
answer is relayed as it arrives with nothing between the upstream and the client's socket
(:mod:`api.relay`). The body passes through untouched (unknown fields included); the route
only parses it to name the model, and hands it to whoever serves inference in this process
(the chat-job-executor, or the frontend's forwarder to one), as ``app.state.inference``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api.errors import AifError, InvalidRequest, MalformedBody
from api.frontend import Inference
from api.relay import Exchange

INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions")


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left (or its body was refused)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_request(body: bytes) -> dict[str, Any]:
    try:
        payload: Any = json.loads(body)
    except ValueError as exc:
        raise MalformedBody(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    return payload


class InferenceEndpoint:
    """The ASGI app of one inference route."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inference: Inference = scope["app"].state.inference
        exchange = Exchange(scope, receive, send)
        try:
            body = await read_body(receive)
            if body is None:
                return
            request = parse_request(body)
            exchange.watch_client()
            await inference.serve(exchange, self.path, request, body)
        except AifError as error:
            await exchange.answer_error(error)
        except asyncio.CancelledError:
            if not exchange.gone:
                raise
            # This task cancelled itself for a client that left: nobody is owed an answer.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            exchange.finish()


routes = [Route(path, InferenceEndpoint(path), methods=["POST"]) for path in INFERENCE_PATHS]


def _operation(path: str) -> dict[str, Any]:
    kind = "chat completions" if path.endswith("chat/completions") else "text completions"
    error = {"description": "an OpenAI-shaped error", "content": {"application/json": {}}}
    return {
        "tags": ["inference"],
        "summary": f"OpenAI {kind}, streamed (stream: true) or whole",
        "operationId": path.strip("/").replace("/", "_"),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["model"],
                        "properties": {"model": {"type": "string"}},
                        "additionalProperties": True,
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "the engine's answer, relayed as it arrives",
                "content": {"application/json": {}, "text/event-stream": {}},
            },
            **{code: error for code in ("400", "404", "405", "413", "422", "429", "502", "503")},
        },
    }


def document(openapi: dict[str, Any]) -> dict[str, Any]:
    """``openapi`` with the inference routes, which FastAPI does not see, described."""
    for path in INFERENCE_PATHS:
        openapi.setdefault("paths", {})[path] = {"post": _operation(path)}
    return openapi
