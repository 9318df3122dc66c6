"""The inference hot path's plumbing: one upstream HTTP client, and relaying an answer.

:class:`UpstreamClient` owns one aiohttp session with keep-alive shorter than the engines' own,
so a reused connection is never one the engine is closing: the frontend's forwarder and the
engines' ``/metrics`` use it. The chat-job-executor sends requests with aif's own client
(:mod:`api.upstream`), whose chunked answers :meth:`Exchange.relay` passes through as received.
:class:`Exchange` is one client request on the ASGI side: it answers errors in the API's
words, watches for the client going away (closing the upstream answer, which makes the engine
abort the work), and relays an upstream answer chunk by chunk as it arrives, with nothing
per chunk but the send and a timestamp. A failure after bytes flowed ends an event stream
with an SSE ``error`` event and no ``[DONE]``. An engine's own 4xx JSON error is relayed in the
API's words: OpenAI's shape and ``type`` for its status (vLLM says ``BadRequestError`` where
OpenAI and aif say ``invalid_request_error``), its message and ``param`` kept.

Choosing the upstream (routing, retries, admission) is the caller's: the chat-job-executor
(:mod:`api.chat_job_executor`) or the frontend's forwarder (:mod:`api.frontend`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from starlette.types import Receive, Scope, Send

from api.errors import AifError
from api.upstream import Answer
from domain.keys import SHARED_FLOW

logger = logging.getLogger(__name__)

# Headers that describe one hop's connection, not the answer (RFC 9110 section 7.6.1); date and
# server are this server's own, which it adds once.
HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"date",
        b"server",
    }
)
EVENT_STREAM = "text/event-stream"
# The ASGI extension that writes body chunks with no message per chunk (api.server).
BODY_WRITER = "aif.body_writer"
# The usage an engine reports at the end of an answer, read from its last bytes only.
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d+)')
_DATA_EVENT = b"data: "
# OpenAI's error ``type`` for each client-error status an engine may answer; other 4xx:
# invalid_request_error. aif's own errors (api/errors.py) use the same words.
ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}
# An engine's error body larger than this is relayed as it is.
MAX_ERROR_BODY_BYTES = 64 * 1024


def normalised_error(status: int, body: bytes) -> bytes | None:
    """An engine's 4xx error body in the API's words, or None when it already is one (or is
    not a JSON error at all, which is relayed as it is)."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    # vLLM answers {"error": {...}}, and before 0.9 the same fields at the top level.
    nested = "error" in payload
    error: Any = payload["error"] if nested else payload
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    wanted = ERROR_TYPES.get(status, "invalid_request_error")
    if nested and error.get("type") == wanted:
        return None
    shaped = {"message": error["message"], "type": wanted, "param": error.get("param"),
              "code": error.get("code", status)}  # fmt: skip
    return json.dumps({"error": shaped}).encode()


class GapSink(Protocol):
    def add(self, gap_s: float) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    # Until the answer's headers: prefill, and the engine's own queue, under load.
    first_byte_s: float
    # Between two chunks of an answer: a stalled engine never hangs a client longer.
    idle_s: float


class UpstreamClient:
    """The process's connections to upstreams (engine instances or a chat-job-executor)."""

    def __init__(self, *, connect_timeout_s: float, keepalive_s: float) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,  # admission control bounds concurrency, per model, not the pool
            keepalive_timeout=self._keepalive_s,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() the client first"
        return self._session

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        first_byte_s: float,
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST ``body`` and return once the answer's headers arrived; the body streams."""
        # Uncompressed: bytes pass through as they come, with no decoding on the way.
        sent = {"content-type": "application/json", "accept-encoding": "identity"}
        if headers:
            sent.update(headers)
        async with asyncio.timeout(first_byte_s):
            return await self.session.post(url, data=body, headers=sent)


@dataclass
class Outcome:
    """What a relayed answer was, for metrics and outlier detection."""

    status: int
    streamed: bool
    first_byte_at: float = 0.0
    finished_at: float = 0.0
    events: int = 0
    completion_tokens: int | None = None
    # usage.prompt_tokens and usage.total_tokens, when the answer reports them.
    prompt_tokens: int | None = None
    total_tokens: int | None = None
    # Set when the answer broke after bytes flowed: the instance's fault, not the client's.
    failure: str = ""

    @property
    def output_tokens(self) -> int:
        """Reported usage, else the stream's events less the role and ``[DONE]`` events."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return max(0, self.events - 2)

    @property
    def tokens(self) -> int:
        """What the answer cost a key's tokens-per-minute: ``usage``, else the output."""
        if self.total_tokens is not None:
            return self.total_tokens
        return (self.prompt_tokens or 0) + self.output_tokens


# An upstream answer: from aif's own client (api.upstream), or aiohttp's (the frontend's).
Upstream = Answer | aiohttp.ClientResponse


class _Tap:
    """A passed-through answer's body as it is parsed: what :meth:`Exchange.relay` counts."""

    __slots__ = ("_body", "_events", "_exchange", "_gaps", "_outcome", "before", "tail")

    def __init__(self, exchange: Exchange, outcome: Outcome, gaps: GapSink | None) -> None:
        self._exchange, self._outcome, self._gaps = exchange, outcome, gaps
        self._events = outcome.streamed
        self._body = False  # body arrived since the last ``arrived``
        self.before = self.tail = b""

    def piece(self, data: bytes) -> None:
        if self._events:
            self._outcome.events += data.count(_DATA_EVENT)
        self.before, self.tail = self.tail, data
        self._body = True

    def arrived(self) -> None:
        if not self._body:  # framing only (the last chunk): no chunk of the answer's own
            return
        self._body = False
        now = time.monotonic()
        exchange, outcome = self._exchange, self._outcome
        if not outcome.first_byte_at:
            outcome.first_byte_at = now
        elif self._gaps is not None:
            self._gaps.add(now - exchange.last_activity)
        exchange.last_activity = now


def _abandon(upstream: Upstream, why: str) -> None:
    """Close ``upstream`` mid-answer; its reader wakes with an error of its own.

    ``close()`` alone wakes it with aiohttp's one module-wide ``ClientConnectionError``
    instance: each raise of it adds the raising frames to its traceback, which then holds
    every abandoned request's frames (and their buffers) for good, and grows until printing
    it is a ``RecursionError``. A fresh exception per answer dies with the answer.
    """
    upstream.content.set_exception(aiohttp.ClientConnectionError(f"closed: {why}"))
    upstream.close()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Exchange:
    """One client request: its ASGI channel, and the upstream answer relayed to it."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.started_at = time.monotonic()
        self.last_activity = self.started_at
        self._receive = receive
        self._send = send
        self._task = asyncio.current_task()
        self._watch: asyncio.Task[None] | None = None
        self._upstream: Upstream | None = None
        self.gone = False
        self.timed_out = False
        self.response_started = False
        # The upstream answer's outcome, once relayed (a key's token count reads it).
        self.outcome: Outcome | None = None
        # Whose request it is in a saturated model's queue; set once the key is known.
        self.flow = SHARED_FLOW

    def header(self, name: bytes) -> str | None:
        """A request header's value (``name`` in lower case), or None."""
        for key, value in self.scope.get("headers", ()):
            if key == name:
                text: str = value.decode("latin-1")
                return text
        return None

    def watch_client(self) -> None:
        """From now on, a client that goes away stops the work done for it."""
        self._watch = asyncio.create_task(_until_disconnect(self._receive))
        self._watch.add_done_callback(self._client_left)

    def _client_left(self, watch: asyncio.Task[None]) -> None:
        if watch.cancelled():
            return
        self.gone = True
        if self._upstream is not None:
            _abandon(self._upstream, "the client left")  # the engine sees it close and aborts
        elif self._task is not None:
            self._task.cancel()  # still waiting for a slot or for headers

    def stalled(self) -> None:
        """The upstream sent nothing for too long: end the answer (the watchdog's call, once
        the answer started; before that the first-byte timeout applies)."""
        self.timed_out = True
        if self._upstream is not None:
            _abandon(self._upstream, "the instance stalled")

    def finish(self) -> None:
        if self._watch is not None:
            self._watch.remove_done_callback(self._client_left)
            self._watch.cancel()

    async def answer_error(self, error: AifError) -> None:
        """An error in the API's words; only before any byte of an answer was sent."""
        await self.answer_json(error.status_code, error.body(), error.headers)

    async def answer_json(
        self, status: int, content: object, headers: dict[str, str] | None = None
    ) -> None:
        """A whole JSON answer of this server's own, unless an answer already started."""
        if self.gone or self.response_started:
            return
        body = json.dumps(content).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.response_started = True
        await self._send({"type": "http.response.start", "status": status, "headers": raw})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def relay(
        self, upstream: Upstream, *, instance: str, gaps: GapSink | None = None
    ) -> Outcome:
        """Stream ``upstream`` to the client as it arrives; the outcome says how it went.

        ``gaps`` hears the time between two chunks of an event stream.
        """
        self._upstream = upstream
        content_type = upstream.headers.get("content-type", "")
        outcome = Outcome(status=upstream.status, streamed=content_type.startswith(EVENT_STREAM))
        self.outcome = outcome
        headers = [(k.lower(), v) for k, v in upstream.raw_headers if k.lower() not in HOP_HEADERS]
        if not outcome.streamed:
            gaps = None
        if 400 <= upstream.status < 500 and not outcome.streamed:
            return await self._relay_error(upstream, outcome, headers)
        send = self._send
        self.last_activity = time.monotonic()
        self.response_started = True
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        # The last two chunks: usage may come in its own event just before ``[DONE]``.
        before = tail = b""
        # The server's direct path for body chunks (api.server.BodyWriter), when it has one.
        writer = self.scope.get("extensions", {}).get(BODY_WRITER, {}).get("writer")
        # Both sides chunked: the engine's bytes pass as they are.
        if isinstance(upstream, Answer) and upstream.chunked and writer and writer.chunked:
            return await self._pass_through(upstream, writer, outcome, instance, gaps)
        readany = upstream.content.readany
        try:
            # readany rather than iter_any: one coroutine less per chunk.
            while chunk := await readany():
                now = time.monotonic()
                if not outcome.first_byte_at:
                    outcome.first_byte_at = now
                elif gaps is not None:
                    gaps.add(now - self.last_activity)
                self.last_activity = now
                if outcome.streamed:
                    outcome.events += chunk.count(_DATA_EVENT)
                before, tail = tail, chunk
                if writer is None:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    continue
                if writer.paused:  # the client reads slower: stop reading the engine too
                    await writer.drain()
                writer.write(chunk)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if self.gone:
                return outcome
            outcome.failure = "stalled" if self.timed_out else f"{type(exc).__name__}: {exc}"
            await self._end_broken(outcome, instance)
            return outcome
        finally:
            upstream.release()
            outcome.finished_at = time.monotonic()
        self._usage(outcome, before + tail)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return outcome

    async def _pass_through(
        self,
        upstream: Answer,
        writer: Any,
        outcome: Outcome,
        instance: str,
        gaps: GapSink | None,
    ) -> Outcome:
        """Relay a chunked answer to a chunked answer: the received bytes are written to the
        client's connection as they are, from the upstream connection's ``data_received``."""
        tap = _Tap(self, outcome, gaps)
        writer.follow(upstream.transport)
        try:
            await upstream.pipe(writer, tap)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if self.gone:
                return outcome
            outcome.failure = "stalled" if self.timed_out else f"{type(exc).__name__}: {exc}"
            if upstream.boundary:
                await self._end_broken(outcome, instance)
            else:  # cut inside a chunk: the client's framing cannot be mended, only cut
                self._cut(outcome, instance)
            return outcome
        finally:
            writer.follow(None)
            upstream.release()
            outcome.finished_at = time.monotonic()
        writer.ended_raw()
        self._usage(outcome, tap.before + tap.tail)
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        return outcome

    def _cut(self, outcome: Outcome, instance: str) -> None:
        logger.warning(
            "answer broke inside a chunk instance=%s path=%s reason=%s",
            instance, self.scope.get("path"), outcome.failure,
        )  # fmt: skip

    @staticmethod
    def _usage(outcome: Outcome, tail: bytes) -> None:
        """The usage the answer's last bytes report, into ``outcome``."""
        found = _COMPLETION_TOKENS.findall(tail)
        if found:
            outcome.completion_tokens = int(found[-1])
        found = _PROMPT_TOKENS.findall(tail)
        if found:
            outcome.prompt_tokens = int(found[-1])
        found = _TOTAL_TOKENS.findall(tail)
        if found:
            outcome.total_tokens = int(found[-1])

    async def _relay_error(
        self,
        upstream: Upstream,
        outcome: Outcome,
        headers: list[tuple[bytes, bytes]],
    ) -> Outcome:
        """An engine's whole 4xx answer, its JSON error put in the API's words."""
        try:
            body = await upstream.content.read(MAX_ERROR_BODY_BYTES + 1)
        except (aiohttp.ClientError, OSError) as exc:
            body, outcome.failure = b"", f"{type(exc).__name__}: {exc}"
        finally:
            upstream.release()
            outcome.first_byte_at = outcome.finished_at = time.monotonic()
        if self.gone:
            return outcome
        shaped = (
            normalised_error(upstream.status, body) if len(body) <= MAX_ERROR_BODY_BYTES else None
        )
        if shaped is not None:
            body = shaped
            headers = [(k, v) for k, v in headers if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", b"%d" % len(body)))
        self.response_started = True
        await self._send(
            {"type": "http.response.start", "status": upstream.status, "headers": headers}
        )
        await self._send({"type": "http.response.body", "body": body, "more_body": False})
        return outcome

    async def _end_broken(self, outcome: Outcome, instance: str) -> None:
        logger.warning(
            "answer broke after bytes flowed instance=%s path=%s reason=%s",
            instance, self.scope.get("path"), outcome.failure,
        )  # fmt: skip
        if outcome.streamed:
            error = {
                "error": {
                    "message": f"the model instance failed mid-answer ({outcome.failure})",
                    "type": "upstream_error",
                    "param": None,
                    "code": 502,
                }
            }
            event = b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
            with contextlib.suppress(OSError):
                await self._send({"type": "http.response.body", "body": event, "more_body": False})
            return
        # A whole JSON answer cut short cannot be mended: the body is left unended, and the
        # server closes the connection, which the client reads as a broken answer.
