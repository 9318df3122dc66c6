"""ASGI middleware: refuse a request body over its surface's size limit before anything reads it.

Each surface has its own limit: the lifecycle API (``/v1/models``) takes small JSON documents,
inference takes prompts that can be long (a 32K-token context is several hundred KiB of JSON).
A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted as
it streams and refused as soon as it passes the limit. Either way the answer is a 413 with an
OpenAI-shaped error body that names the limit, and nothing reaches the routes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import MalformedBody, PayloadTooLarge, log_failure
from domain.settings import Settings

INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
DEFAULT_MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    # The setting that raises it, named in the refusal.
    setting: str
    # How deep a JSON body may nest (AIF_MAX_JSON_DEPTH).
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH


@dataclass(frozen=True)
class BodyLimits:
    api: BodyLimit
    inference: BodyLimit

    def for_path(self, path: str) -> BodyLimit:
        return self.inference if path in INFERENCE_PATHS else self.api


def body_limits(settings: Settings) -> BodyLimits:
    depth = settings.max_json_depth
    return BodyLimits(
        api=BodyLimit(settings.max_body_bytes, "AIF_MAX_BODY_BYTES", depth),
        inference=BodyLimit(
            settings.max_inference_body_bytes, "AIF_MAX_INFERENCE_BODY_BYTES", depth
        ),
    )


def payload_too_large(limit: BodyLimit) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is larger than {limit.max_bytes} bytes, this endpoint's limit "
        f"({limit.setting})"
    )


def _refusal(limit: BodyLimit) -> JSONResponse:
    exc = payload_too_large(limit)
    return JSONResponse(exc.body(), status_code=exc.status_code)


class BodySizeLimit:
    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope["path"])
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > limit.max_bytes:
                await _refusal(limit)(scope, receive, send)
                return
        received = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    # Answer now, and tell the app the client left so it stops reading.
                    refused = True
                    await _refusal(limit)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)


class UnexpectedErrors:
    """The last word on an exception no handler took: an OpenAI-shaped 500, one log line.

    Starlette's own last resort answers ``text/plain`` and logs the traceback twice; this
    answers in the API's words (:func:`api.errors.from_exception`) when the response has not
    started, and logs once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            error = log_failure(exc, scope.get("method", ""), scope.get("path", ""))
            if not started:
                response = JSONResponse(
                    error.body(), status_code=error.status_code, headers=error.headers
                )
                await response(scope, receive, send)


# What changes nesting depth in JSON text, and what starts or escapes inside a string.
_JSON_STRUCTURE = re.compile(rb'[\\"\[\]{}]')


def json_too_deep(body: bytes, max_depth: int) -> bool:
    """Whether ``body`` nests arrays and objects deeper than ``max_depth``, without parsing it.

    A scan of brackets outside strings, with no recursion, so a nested-JSON bomb costs one
    pass and no stack. Most bodies have too few brackets to nest that deep, and cost a count.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    depth, in_string, escaped_at = 0, False, -1
    for match in _JSON_STRUCTURE.finditer(body):
        at = match.start()
        if at == escaped_at:
            continue
        char = body[at]
        if in_string:
            if char == 0x5C:  # backslash: the next character is escaped
                escaped_at = at + 1
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                return True
        elif char in (0x5D, 0x7D):
            depth -= 1
    return False


def too_deep(max_depth: int) -> MalformedBody:
    return MalformedBody(
        f"request body nests JSON deeper than {max_depth} levels, the limit (AIF_MAX_JSON_DEPTH)"
    )


class JsonDepthLimit:
    """Refuse a body nested deeper than its limit with a 400, before any JSON parser sees it.

    For the framework's routes (the inference routes check their own, in
    :func:`api.routes.chat.parse_request`). Bodies here are small (``AIF_MAX_BODY_BYTES``), so
    each is read whole, checked, and handed on unchanged.
    """

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        max_depth = self.limits.for_path(scope["path"]).max_json_depth
        if json_too_deep(body, max_depth):
            error = too_deep(max_depth)
            await JSONResponse(error.body(), status_code=error.status_code)(scope, receive, send)
            return
        whole: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replaying() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replaying
