"""ASGI middleware: refuse a request body over its surface's size limit before anything reads it.

Each surface has its own limit: the lifecycle API (``/v1/models``) takes small JSON documents,
inference takes prompts that can be long (a 32K-token context is several hundred KiB of JSON).
A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted as
it streams and refused as soon as it passes the limit. Either way the answer is a 413 with an
OpenAI-shaped error body that names the limit, and nothing reaches the routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PayloadTooLarge, log_failure
from domain.settings import Settings

INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    # The setting that raises it, named in the refusal.
    setting: str


@dataclass(frozen=True)
class BodyLimits:
    api: BodyLimit
    inference: BodyLimit

    def for_path(self, path: str) -> BodyLimit:
        return self.inference if path in INFERENCE_PATHS else self.api


def body_limits(settings: Settings) -> BodyLimits:
    return BodyLimits(
        api=BodyLimit(settings.max_body_bytes, "AIF_MAX_BODY_BYTES"),
        inference=BodyLimit(settings.max_inference_body_bytes, "AIF_MAX_INFERENCE_BODY_BYTES"),
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
