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
import logging
from typing import Any

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api.auth import Principal
from api.deps import BEARER_SCHEME
from api.errors import ERROR_STATUSES, AifError, InvalidRequest, MalformedBody
from api.frontend import Inference
from api.middleware import (
    DEFAULT_MAX_JSON_DEPTH,
    INFERENCE_PATHS,
    BodyLimit,
    json_too_deep,
    payload_too_large,
    too_deep,
)
from api.relay import Exchange, Outcome
from api.usage import UsageRecorder
from domain.keys import PRIORITY_HEADER

logger = logging.getLogger(__name__)


async def read_body(scope: Scope, receive: Receive, limit: BodyLimit) -> bytes | None:
    """The whole request body, or None when the client left; PayloadTooLarge past ``limit``."""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > limit.max_bytes:
            raise payload_too_large(limit)
    chunks, received = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit.max_bytes:
            raise payload_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_request(body: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> dict[str, Any]:
    """The request as a dict; a nested-JSON bomb is refused before the parser recurses."""
    if json_too_deep(body, max_depth):
        raise too_deep(max_depth)
    try:
        payload: Any = json.loads(body)
    except RecursionError as exc:  # cannot pass the check above; kept as the last word
        raise too_deep(max_depth) from exc
    except ValueError as exc:
        raise MalformedBody(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    return payload


class InferenceEndpoint:
    """The ASGI app of one inference route; ``state.inference`` serves it.

    It answers every error itself, in the API's words, and checks the caller's key itself
    (``state.keys``, :class:`api.auth.KeyRing`): it runs ahead of the framework's middleware
    (see :class:`api.app.AifApp`), where nothing else would. An answered request's tokens go
    to ``state.usage`` (:class:`api.usage.UsageRecorder`), None where another process serves
    the request and counts it.
    The key, and ``x-priority``, say the request's flow in a saturated model's queue
    (:mod:`api.chat_job_executor.admission`).
    """

    def __init__(self, path: str, state: Any, limit: BodyLimit) -> None:
        self.path = path
        self._state = state
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inference: Inference = self._state.inference
        exchange = Exchange(scope, receive, send)
        # Counted here only when served here: a frontend that forwards the request leaves its
        # key's limits and usage to the chat-job-executor it forwards to, so each counts once.
        principal: Principal | None = None
        counted: Principal | None = None
        model: Any = None
        try:
            # The key first, from memory (api.auth): no store read, no await.
            principal = self._state.keys.authenticate(scope["headers"])
            if self._state.counts_limits:
                await principal.admit()
                counted = principal
            body = await read_body(scope, receive, self._limit)
            if body is None:
                return
            request = parse_request(body, self._limit.max_json_depth)
            model = request.get("model")
            principal.require_model(model)
            exchange.flow = principal.flow.lowered(exchange.header(PRIORITY_HEADER))
            exchange.watch_client()
            await inference.serve(exchange, self.path, request, body)
        except AifError as error:
            await exchange.answer_error(error)
        except Exception:
            logger.exception("inference request failed path=%s", self.path)
            await exchange.answer_error(AifError("internal error; the server log has the cause"))
        except asyncio.CancelledError:
            if not exchange.gone:
                raise
            # This task cancelled itself for a client that left: nobody is owed an answer.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            exchange.finish()
            outcome = exchange.outcome
            if counted is not None and outcome is not None:
                await counted.charge(outcome.tokens)
            if principal is not None and outcome is not None:
                self._record_usage(principal, model, outcome)

    def _record_usage(self, principal: Principal, model: Any, outcome: Outcome) -> None:
        """An answered request's tokens, to this process's usage (None: another counts it)."""
        usage: UsageRecorder | None = self._state.usage
        if usage is not None and outcome.status == 200 and isinstance(model, str):
            usage.record(principal.key_id, model, outcome.prompt_tokens or 0, outcome.output_tokens)


def endpoints(state: Any, limit: BodyLimit) -> dict[str, InferenceEndpoint]:
    return {path: InferenceEndpoint(path, state, limit) for path in INFERENCE_PATHS}


def routes(served: dict[str, InferenceEndpoint]) -> list[Route]:
    """The same endpoints as framework routes: a wrong method gets its 405 there."""
    return [Route(path, endpoint, methods=["POST"]) for path, endpoint in served.items()]


ERROR_SCHEMA = "#/components/schemas/ErrorResponse"


def _operation(path: str) -> dict[str, Any]:
    kind = "chat completions" if path.endswith("chat/completions") else "text completions"
    error = {"content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA}}}}
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
            **{
                str(status): {"description": description, **error}
                for status, description in ERROR_STATUSES.items()
            },
        },
        "security": [{BEARER_SCHEME: []}],
    }


def document(openapi: dict[str, Any]) -> dict[str, Any]:
    """``openapi`` with the inference routes, which FastAPI does not see, described."""
    for path in INFERENCE_PATHS:
        openapi.setdefault("paths", {})[path] = {"post": _operation(path)}
    schemes = openapi.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes.setdefault(BEARER_SCHEME, {"type": "http", "scheme": "bearer"})
    return openapi
