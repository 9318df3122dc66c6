"""aif's own HTTP/1.1 client for the inference hot path: one ``asyncio.Protocol`` per upstream
connection, a small keep-alive pool per instance, and answers relayed from ``data_received``.

A request is written in one ``transport.write``; the answer's head is parsed with httptools'
response parser (C, as uvicorn parses requests). Then the body goes one of two ways:

* **passed through** (:meth:`Answer.pipe`): for a chunked answer to a client whose own answer is
  chunked too, each received buffer is written to the client's connection as it is, framing
  included, from ``data_received``: no de-chunking and re-chunking, no coroutine woken per
  chunk. The bytes are still fed to the parser, whose body pieces go to a :class:`Tap` (event
  counts, timings, the last pieces for usage), and whose end of message ends the answer. The
  client's flow control reaches back: a client that reads slower pauses reading the engine.
* **read** (:meth:`Answer.readany`, :meth:`Answer.read`): the parsed body pieces, for every
  other answer (a content-length body, an error, an HTTP/1.0 client).

The pool keeps at most ``max_idle`` idle connections per instance, each for at most
``keepalive_s`` (shorter than the engines' own keep-alive, so a reused connection is never one
the engine is closing); a request on a reused connection that fails before any byte of its
answer is sent again, once, on a fresh connection.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

_CHUNKED = b"chunked"
# Body bytes read from an instance and not yet read by the relay, past which reading pauses.
READ_HIGH_WATER = 256 * 1024


class UpstreamClosed(ConnectionError):
    """The upstream connection ended, or sent what is not HTTP, before the answer was whole."""


class Tap(Protocol):
    """Hears a passed-through answer's body: ``piece`` per parsed body piece, ``arrived`` once
    per received buffer that held body."""

    def piece(self, data: bytes) -> None: ...

    def arrived(self) -> None: ...


class Sink(Protocol):
    """The client's side of a passed-through answer (:class:`api.server.BodyWriter`)."""

    def write_raw(self, data: bytes) -> None: ...


class Answer:
    """One upstream answer: status and headers once the head arrived, then its body."""

    __slots__ = ("_buffered", "_conn", "_done", "_error", "_keep_raw", "_pieces", "_raw",
                 "_sink", "_tap", "_waiter", "boundary", "chunked", "headers", "raw_headers",
                 "received", "status")  # fmt: skip

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunked = False
        self._pieces: list[bytes] = []  # parsed body not yet read
        self._raw: list[bytes] = []  # received body bytes not yet passed through
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._tap: Tap | None = None
        self._sink: Sink | None = None
        # The bytes passed through end between two chunks: the client's framing is whole.
        self.boundary = True
        # Body bytes received (passed through or not).
        self.received = 0
        # Received bytes are kept for :meth:`pipe` until the body is read instead.
        self._keep_raw = True
        self._buffered = 0  # bytes in _pieces

    @property
    def content(self) -> Answer:
        """aiohttp's reader spelling (``content.readany``), read by the relay's fallback."""
        return self

    # --- the connection's side -----------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _body(self, data: bytes) -> None:
        if self._tap is not None:
            self._tap.piece(data)
        else:
            self._pieces.append(data)
            self._buffered += len(data)
            if self._buffered > READ_HIGH_WATER and self._conn is not None:
                # Read slower than it comes: stop reading the instance until it is read.
                transport = self._conn.transport
                if transport is not None:
                    transport.pause_reading()
            self._wake()

    def _complete(self) -> None:
        self._done = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        """End the answer with ``exc`` (a failure, or the relay giving it up)."""
        if self._done or self._error is not None:
            return
        self._error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # --- the relay's side ----------------------------------------------------------------

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def readany(self) -> bytes:
        """The body received so far and not yet read; ``b""`` at its end."""
        if self._keep_raw:
            self._keep_raw = False
            self._raw.clear()
        while not self._pieces:
            if self._done:
                return b""
            await self._wait()
        if self._buffered > READ_HIGH_WATER and self._conn is not None:
            transport = self._conn.transport
            if transport is not None:
                transport.resume_reading()
        self._buffered = 0
        if len(self._pieces) == 1:
            return self._pieces.pop()
        data = b"".join(self._pieces)
        self._pieces.clear()
        return data

    async def read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body (less only at its end)."""
        data = b""
        while len(data) < limit and (chunk := await self.readany()):
            data += chunk
        if len(data) > limit:
            self._pieces.insert(0, data[limit:])
            self._buffered += len(data) - limit
            data = data[:limit]
        return data

    async def pipe(self, sink: Sink, tap: Tap) -> None:
        """Pass the body through to ``sink`` as it arrives; return at its end."""
        self._sink, self._tap = sink, tap
        if self._raw:
            for data in self._raw:
                sink.write_raw(data)
            self._raw.clear()
            for piece in self._pieces:
                tap.piece(piece)
            self._pieces.clear()
            tap.arrived()
        if self._buffered > READ_HIGH_WATER and self._conn is not None:
            transport = self._conn.transport
            if transport is not None:
                transport.resume_reading()
        self._buffered = 0
        while not self._done:
            await self._wait()

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport if self._conn is not None else None

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool when it is whole."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release(self._done and self._error is None)

    def close(self) -> None:
        """Give the answer up: its connection closes (an engine reads that as an abort)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release(False)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an instance, carrying one request at a time."""

    def __init__(self, pool: _HostPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.lost = False
        self._answer: Answer | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head: asyncio.Future[Answer] | None = None
        self._head_buf = b""
        self._in_head = False
        self._keep_alive = True
        self._last_chunk_event = ""
        # Some byte of the current answer arrived.
        self.answered = False

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._pool.forget(self)
        self._fail(UpstreamClosed(f"the instance closed the connection ({exc or 'EOF'})"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: an answer cut at EOF is a failure

    def data_received(self, data: bytes) -> None:
        self.answered = True
        answer, parser = self._answer, self._parser
        if answer is None or parser is None:
            # Bytes while idle: the connection is not one to reuse.
            self._keep_alive = False
            if self.transport is not None:
                self.transport.close()
            return
        if self._in_head:
            self._head_buf += data
            self._feed(parser, data)
            if not self._in_head and self._answer is answer:
                end = self._head_buf.find(b"\r\n\r\n") + 4
                rest = self._head_buf[end:]
                self._head_buf = b""
                if rest:
                    answer.received += len(rest)
                    if answer._keep_raw:
                        answer._raw.append(rest)
                    self._boundary(answer, rest)
            return
        answer.received += len(data)
        sink = answer._sink
        if sink is not None:
            sink.write_raw(data)
            self._last_chunk_event = ""
            self._feed(parser, data)
            self._boundary(answer, data)
            tap = answer._tap
            if tap is not None:
                tap.arrived()
            return
        if answer._keep_raw:
            answer._raw.append(data)
        self._feed(parser, data)
        self._boundary(answer, data)

    def pause_writing(self) -> None:
        pass  # one request at a time, written whole: nothing to hold back

    def resume_writing(self) -> None:
        pass

    # --- httptools' callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._answer is not None
        name = name.lower()
        self._answer.raw_headers.append((name, value))
        if name == b"transfer-encoding" and _CHUNKED in value.lower():
            self._answer.chunked = True

    def on_headers_complete(self) -> None:
        answer, parser = self._answer, self._parser
        assert answer is not None and parser is not None
        answer.status = parser.get_status_code()
        answer.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in answer.raw_headers}
        self._keep_alive = parser.should_keep_alive()
        self._in_head = False
        head = self._head
        if head is not None and not head.done():
            head.set_result(answer)

    def on_body(self, body: bytes) -> None:
        assert self._answer is not None
        self._answer._body(body)

    def on_chunk_header(self) -> None:
        self._last_chunk_event = "header"

    def on_chunk_complete(self) -> None:
        self._last_chunk_event = "complete"

    def on_message_complete(self) -> None:
        answer = self._answer
        if answer is not None:
            self._parser = None
            answer._complete()

    # --- the pool's side ------------------------------------------------------------------

    def _feed(self, parser: httptools.HttpResponseParser, data: bytes) -> None:
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._keep_alive = False
            self._fail(UpstreamClosed(f"the instance's answer is not valid HTTP: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def _boundary(self, answer: Answer, data: bytes) -> None:
        """Whether the bytes so far end between two chunks (see :attr:`Answer.boundary`)."""
        event = self._last_chunk_event
        if event == "header":
            answer.boundary = False
        elif event == "complete":
            answer.boundary = data.endswith(b"\r\n")
        elif answer.chunked and not data.endswith(b"\r\n"):
            answer.boundary = False

    def _fail(self, exc: Exception) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(exc)
        answer = self._answer
        if answer is not None:
            answer.set_exception(exc)

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        """Write ``request``; the future is the answer once its head arrived."""
        assert self.transport is not None
        self._answer = Answer(self)
        self._parser = httptools.HttpResponseParser(self)
        self._head = asyncio.get_running_loop().create_future()
        self._head_buf = b""
        self._in_head = True
        self._last_chunk_event = ""
        self.answered = False
        self.transport.write(request)
        return self._head

    def release(self, whole: bool) -> None:
        """The answer is done with; reuse the connection only if it ended cleanly."""
        self._answer, self._parser, self._head = None, None, None
        if whole and self._keep_alive and not self.lost and self.transport is not None:
            self.transport.resume_reading()  # a slow client may have paused it
            self._pool.put(self)
            return
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _HostPool:
    """Idle keep-alive connections to one instance, most recently used last."""

    def __init__(self, client: UpstreamPool, host: str, port: int, ssl: bool) -> None:
        self._client = client
        self.host, self.port, self.ssl = host, port, ssl
        self.authority = f"{host}:{port}".encode()
        self.idle: collections.deque[_Connection] = collections.deque()
        # The instance left the routing table: connections back from a request are closed.
        self.retired = False

    def _expire(self, now: float) -> None:
        idle, oldest = self.idle, now - self._client.keepalive_s
        while idle and idle[0].idle_since < oldest:
            idle.popleft().close()

    def take(self) -> _Connection | None:
        self._expire(time.monotonic())
        while self.idle:
            conn = self.idle.pop()
            if not conn.lost:
                return conn
        return None

    def put(self, conn: _Connection) -> None:
        if self.retired:
            conn.close()
            return
        now = time.monotonic()
        conn.idle_since = now
        self.idle.append(conn)
        self._expire(now)
        while len(self.idle) > self._client.max_idle:
            self.idle.popleft().close()

    def forget(self, conn: _Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._client.connect_timeout_s):
            _, protocol = await loop.create_connection(
                lambda: _Connection(self), self.host, self.port, ssl=self.ssl or None
            )
        return protocol

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class UpstreamPool:
    """The process's keep-alive connections to instances, and :meth:`post` on them."""

    def __init__(
        self, *, connect_timeout_s: float, keepalive_s: float, max_idle: int = 256
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.max_idle = max_idle
        self._hosts: dict[str, tuple[_HostPool, bytes]] = {}

    def _host(self, url: str) -> tuple[_HostPool, bytes]:
        """The pool of ``url``'s instance, and the path prefix its URL carries."""
        found = self._hosts.get(url)
        if found is None:
            parts = urlsplit(url)
            secure = parts.scheme == "https"
            port = parts.port or (443 if secure else 80)
            host = _HostPool(self, parts.hostname or "127.0.0.1", port, secure)
            found = self._hosts[url] = (host, parts.path.rstrip("/").encode())
        return found

    async def post(
        self,
        base_url: str,
        path: str,
        body: bytes,
        *,
        first_byte_s: float,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """POST ``body`` to ``base_url + path``; the answer once its head arrived."""
        host, prefix = self._host(base_url)
        head = [
            b"POST %s%s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"accept-encoding: identity\r\ncontent-length: %d\r\n"
            % (prefix, path.encode(), host.authority, len(body))
        ]
        for name, value in (headers or {}).items():
            head.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        request = b"".join(head) + b"\r\n" + body
        async with asyncio.timeout(first_byte_s):
            conn = host.take()
            if conn is not None:
                try:
                    return await self._exchange(conn, request)
                except UpstreamClosed:
                    if conn.answered:
                        raise
                    # Closed by the engine as it was reused, before any byte: once more, on
                    # a fresh connection.
            return await self._exchange(await host.connect(), request)

    @staticmethod
    async def _exchange(conn: _Connection, request: bytes) -> Answer:
        head = conn.send(request)
        try:
            return await head
        except BaseException:
            conn.release(False)
            raise

    def retain(self, urls: set[str]) -> None:
        """Close the idle connections to every instance but those of ``urls`` (the routing
        table's), and those of its requests as they end: an instance that left routing, being
        drained, has nothing connected once its last request is answered, not a keep-alive
        later."""
        for url in [u for u in self._hosts if u not in urls]:
            host, _ = self._hosts.pop(url)
            host.retired = True
            host.close()

    def close(self) -> None:
        for host, _ in self._hosts.values():
            host.close()
        self._hosts.clear()
