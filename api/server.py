"""The HTTP server's own limits: what a hostile or broken client cannot outwait.

uvicorn bounds keep-alive and concurrency but has no deadline for a request's headers or its
body, so a client that trickles bytes (slowloris) holds a connection for ever. The protocol
here is uvicorn's httptools one with those deadlines added:

* **headers**: from the moment a connection opens, or a new request's first byte arrives,
  its headers must be complete within ``AIF_HEADER_TIMEOUT_S``; else a 408 and the connection
  is closed.
* **body**: no silence longer than ``AIF_BODY_IDLE_TIMEOUT_S`` while a body arrives, and once
  that long has passed, at least ``AIF_BODY_MIN_RATE_BYTES_S`` on average; else the
  connection is closed (the app sees the client leave).

A refusal past ``AIF_MAX_CONNECTIONS`` is uvicorn's 503, answered here in the API's words.

A client that goes away is a normal event: the protocol counts it in
``aif_client_disconnects_total{where}`` by where the exchange was when the connection ended
(``before_request``: nothing or part of the request head; ``mid_body``: the head arrived but
not the whole body; ``mid_response``: the request arrived but the answer was not complete),
and writes one DEBUG line. A keep-alive connection closed between requests is not counted,
nor one this server cut.

The protocol also offers the relay a shorter path for an answer's body, the ASGI extension
``aif.body_writer`` (``{"writer": BodyWriter}``): after ``http.response.start``, each chunk is
framed and written to the connection as uvicorn's ``send`` would, without an ASGI message and
a coroutine per chunk; or, for a chunked answer, an upstream's chunked bytes are written as
they are (``write_raw``), and the upstream connection's reading follows this client's flow
control (``follow``: paused while the client's write buffer is full). The answer still ends
with an ASGI ``http.response.body`` message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from api.errors import error_body
from api.relay import BODY_WRITER
from domain.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientLimits:
    header_timeout_s: float
    body_idle_timeout_s: float
    body_min_rate_bytes_s: float

    @classmethod
    def of(cls, settings: Settings) -> ClientLimits:
        return cls(
            settings.header_timeout_s,
            settings.body_idle_timeout_s,
            settings.body_min_rate_bytes_s,
        )


def _response(status: bytes, message: str, error_type: str, code: int) -> bytes:
    body = json.dumps(error_body(message, error_type, code)).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


_TIMEOUT_408 = _response(
    b"408 Request Timeout",
    "request headers did not arrive in time (AIF_HEADER_TIMEOUT_S)",
    "invalid_request_error",
    408,
)


async def _too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    body = json.dumps(
        error_body(
            "the server has as many connections as it takes (AIF_MAX_CONNECTIONS); retry shortly",
            "service_unavailable_error",
            503,
        )
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"1"),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


Where = Literal["before_request", "mid_body", "mid_response"]
WHERE: tuple[Where, ...] = ("before_request", "mid_body", "mid_response")


def client_disconnects(registry: CollectorRegistry) -> Counter:
    """``aif_client_disconnects_total{where}``, every label present from the start."""
    counter = Counter(
        "aif_client_disconnects",
        "Clients that closed or reset their connection before their answer was complete, by "
        "where the exchange was (before_request, mid_body, mid_response).",
        ["where"],
        registry=registry,
    )
    for where in WHERE:
        counter.labels(where)
    return counter


# uvicorn answers ``limit_concurrency`` refusals with this app; its own says text/plain.
httptools_impl.service_unavailable = _too_many_connections  # type: ignore[attr-defined]


class BodyWriter:
    """Writes the body chunks of one answer straight to its connection, framed as uvicorn's
    ``send`` frames them (chunked, or as they are under a content-length)."""

    __slots__ = ("_cycle", "_protocol")

    def __init__(self, cycle: RequestResponseCycle, protocol: GuardedHttpToolsProtocol) -> None:
        self._cycle = cycle
        self._protocol = protocol

    @property
    def chunked(self) -> bool:
        """The started answer is chunked: bytes framed as chunks may be written as they are
        (:meth:`write_raw`)."""
        return bool(self._cycle.chunked_encoding)

    def write_raw(self, data: bytes) -> None:
        """Bytes already framed for the connection (chunks, from an upstream's chunked answer);
        nothing once the client left. Once they include the last chunk, :meth:`ended_raw`."""
        if not self._cycle.disconnected:
            self._cycle.transport.write(data)

    def ended_raw(self) -> None:
        """The raw bytes written ended the body (its last chunk): the answer's final ASGI
        message then adds no framing of its own."""
        self._cycle.chunked_encoding = False

    def follow(self, upstream: asyncio.Transport | None) -> None:
        """While the client reads slower than the answer comes, pause reading ``upstream``
        (and resume when it catches up); None stops following."""
        protocol = self._protocol
        previous, protocol.follower = protocol.follower, upstream
        if previous is not None and previous is not upstream:
            previous.resume_reading()
        if upstream is not None and protocol.flow.write_paused:
            upstream.pause_reading()

    @property
    def paused(self) -> bool:
        """The client reads slower than the answer comes: :meth:`drain` before writing."""
        cycle = self._cycle
        return bool(cycle.flow.write_paused) and not cycle.disconnected

    async def drain(self) -> None:
        await self._cycle.flow.drain()

    def write(self, chunk: bytes) -> None:
        """One non-empty chunk of a started, unfinished answer; nothing once the client left."""
        cycle = self._cycle
        if cycle.disconnected:
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError("a body chunk outside a started, unfinished answer")
        if cycle.chunked_encoding:
            cycle.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            return
        if len(chunk) > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        cycle.expected_content_length -= len(chunk)
        cycle.transport.write(chunk)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines (see the module)."""

    limits: ClientLimits = ClientLimits(10.0, 10.0, 1024.0)
    disconnects: Counter | None = None
    _deadline: asyncio.TimerHandle | None = None
    _body_started = 0.0
    _body_bytes = 0
    # Where the connection's current exchange is: a new connection is owed a request.
    _at: Where | Literal["between_requests"] = "before_request"
    _cut_here = False
    # An upstream connection whose reading follows this client's (BodyWriter.follow).
    follower: asyncio.Transport | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.follower is not None:
            self.follower.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.follower is not None:
            self.follower.resume_reading()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        at = self._at
        if at == "mid_response" and (self.cycle is None or self.cycle.response_complete):
            at = "between_requests"
        if at != "between_requests" and not self._cut_here:
            if self.disconnects is not None:
                self.disconnects.labels(at).inc()
            logger.debug("client left client=%s where=%s error=%r", self.client, at, exc)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._at = "before_request"
        if self._deadline is None:  # a connection's first request is already timed
            self._arm(self.limits.header_timeout_s, self._headers_late)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._at = "mid_body"
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:
            # As the ASGI spec has it: the extension's name, to a dict of what it offers.
            extensions = self.scope.setdefault("extensions", {})
            extensions[BODY_WRITER] = {"writer": BodyWriter(self.cycle, self)}
        self._body_started, self._body_bytes = self.loop.time(), 0
        self._arm(self.limits.body_idle_timeout_s, self._body_late)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_bytes += len(body)
        elapsed = self.loop.time() - self._body_started
        if (
            elapsed > self.limits.body_idle_timeout_s
            and self._body_bytes / elapsed < self.limits.body_min_rate_bytes_s
        ):
            self._cut("body arrives slower than AIF_BODY_MIN_RATE_BYTES_S")
            return
        self._arm(self.limits.body_idle_timeout_s, self._body_late)

    def on_message_complete(self) -> None:
        self._disarm()
        self._at = "mid_response"
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._at == "mid_response":
            self._at = "between_requests"
        super().on_response_complete()

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_408)
        self._cut("headers not complete within AIF_HEADER_TIMEOUT_S")

    def _body_late(self) -> None:
        self._deadline = None
        if self.flow.read_paused:  # the app is behind, not the client
            self._arm(self.limits.body_idle_timeout_s, self._body_late)
            return
        self._cut("body silent for AIF_BODY_IDLE_TIMEOUT_S")

    def _cut(self, reason: str) -> None:
        self._disarm()
        self._cut_here = True
        logger.debug("slow client cut client=%s: %s", self.client, reason)
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(
    limits: ClientLimits, disconnects: Counter | None = None
) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.run(http=...)``, with these limits and counter."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": limits, "disconnects": disconnects},
    )


def server_options(settings: Settings, disconnects: Counter | None = None) -> dict[str, Any]:
    """uvicorn's options for the limits above and its own; ``disconnects`` counts clients
    that leave (:func:`client_disconnects`)."""
    return {
        "http": guarded_protocol(ClientLimits.of(settings), disconnects),
        "timeout_keep_alive": settings.client_keepalive_s,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
