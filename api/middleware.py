"""ASGI middleware: refuse request bodies over a size limit before anything reads them.

A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted as
it streams and refused as soon as it passes the limit. Either way the answer is a 413 with an
OpenAI-shaped error body and nothing reaches the routes.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PayloadTooLarge, error_body


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _refusal(self) -> JSONResponse:
        exc = PayloadTooLarge(f"request body is larger than {self.max_body_bytes} bytes")
        return JSONResponse(
            error_body(exc.message, exc.error_type, exc.status_code), status_code=exc.status_code
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await self._refusal()(scope, receive, send)
                return
        received = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Answer now, and tell the app the client left so it stops reading.
                    refused = True
                    await self._refusal()(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)
