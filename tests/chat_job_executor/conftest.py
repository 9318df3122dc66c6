"""Real servers on loopback for the chat path: scriptable engines, and aif's app under uvicorn.

:class:`ScriptedEngine` speaks just enough HTTP/1.1 (keep-alive, chunked answers) to behave as
an engine does and as engines fail: answer whole or streamed, reset the connection, answer 500
or 429 before the first byte, stall before or after the first byte, die mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.app import Role, create_app
from api.server import server_options
from api.store.sqlite import SqliteModelStore
from domain.records import Endpoint, ModelRecord, ModelStatus, Pvc, Slo
from domain.settings import Settings
from tests.conftest import free_port

MODES = ("ok", "reset", "500", "429", "400-vllm", "stall-headers", "stall-stream", "die-stream")
# vLLM's answer to a bad request (its ErrorResponse before 0.9: the fields at the top level).
VLLM_BAD_REQUEST = {"object": "error", "message": "max_tokens must be at least 1, got -1.",
                    "type": "BadRequestError", "param": "max_tokens", "code": 400}  # fmt: skip


@dataclass(kw_only=True)
class LoopbackEngine:
    """A TCP server on a free loopback port; a subclass answers each connection in
    ``_connection`` (after ``_track``), and ``stop`` aborts the connections still open."""

    port: int = field(default_factory=free_port)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            await self._server.wait_closed()

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@dataclass
class ScriptedEngine(LoopbackEngine):
    mode: str = "ok"
    tokens: int = 4
    token_delay_s: float = 0.002
    requests: int = 0
    prompts: list[Any] = field(default_factory=list)
    # Streams whose client went away before the engine finished them.
    aborted: int = 0

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length)) if length else {}
                self.requests += 1
                self.prompts.append(body)
                if not await self._answer(body, reader, writer):
                    return
        writer.close()

    async def _answer(
        self, body: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request as the mode says; False when the connection is done."""
        mode = self.mode
        if mode == "reset":
            writer.transport.abort()
            return False
        if mode in ("500", "429"):
            error = json.dumps({"error": {"message": f"engine says {mode}", "code": int(mode)}})
            writer.write(_head(int(mode), "application/json", len(error)) + error.encode())
            await writer.drain()
            return True
        if mode == "400-vllm":
            error = json.dumps(VLLM_BAD_REQUEST)
            writer.write(_head(400, "application/json", len(error)) + error.encode())
            await writer.drain()
            return True
        if mode == "stall-headers":
            await asyncio.sleep(3600)
        if not body.get("stream"):
            answer = json.dumps(_completion(body, self.port, self.tokens))
            writer.write(_head(200, "application/json", len(answer)) + answer.encode())
            await writer.drain()
            return True
        writer.write(_head(200, "text/event-stream", None))
        for index in range(self.tokens):
            if mode == "stall-stream" and index == 1:
                await asyncio.sleep(3600)
            if mode == "die-stream" and index == 2:
                writer.transport.abort()
                return False
            writer.write(_chunk(f'data: {{"port": {self.port}, "token": {index}}}\n\n'))
            try:
                await writer.drain()
            except ConnectionError:
                self.aborted += 1
                return False
            await asyncio.sleep(self.token_delay_s)
            if reader.at_eof():
                self.aborted += 1
                return False
        # As vLLM sends them: the usage event, then ``[DONE]`` in a write of its own.
        usage = {"usage": {"prompt_tokens": 3, "completion_tokens": self.tokens}}
        writer.write(_chunk(f"data: {json.dumps(usage)}\n\n"))
        await writer.drain()
        await asyncio.sleep(self.token_delay_s or 0.005)
        writer.write(_chunk("data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return True


def _head(status: int, content_type: str, length: int | None) -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (
        f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n{framing}\r\n"
        "date: Thu, 01 Jan 1970 00:00:00 GMT\r\nserver: scripted-engine\r\n\r\n"
    ).encode()


def _chunk(text: str) -> bytes:
    data = text.encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


def _completion(body: dict[str, Any], port: int, tokens: int) -> dict[str, Any]:
    return {
        "served_by": port,
        "echo": body,
        "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens},
    }


def model_record(name: str, engines: list[ScriptedEngine], **fields: Any) -> ModelRecord:
    values: dict[str, Any] = {
        "name": name, "type": "QwQ-32B", "resource_type": "huawei.com/ascend-1980",
        "max_instance": 8, "min_instance": 1, "replicas": len(engines),
        "status": ModelStatus.ACTIVE,
        "pvc": Pvc(name="release-models", path="Qwen/QwQ-32B"),
        "slo": Slo(target_time_to_first_token_p95=1000, target_time_per_output_token_p95=20),
        "endpoints": [Endpoint(instance_id=f"i{e.port}", url=e.url) for e in engines],
    }  # fmt: skip
    return ModelRecord(**{**values, **fields})


@dataclass
class Gateway:
    url: str
    store: SqliteModelStore
    state: Any


@pytest.fixture
async def engines() -> AsyncIterator[Callable[..., Any]]:
    started: list[ScriptedEngine] = []

    async def start(count: int, **options: Any) -> list[ScriptedEngine]:
        batch = [ScriptedEngine(**options) for _ in range(count)]
        for engine in batch:
            await engine.start()
        started.extend(batch)
        return batch

    yield start
    for engine in started:
        await engine.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteModelStore]:
    s = SqliteModelStore(tmp_path / "aif.db")
    yield s
    s.close()


@pytest.fixture
async def gateway(tmp_path: Path, store: SqliteModelStore) -> AsyncIterator[Callable[..., Any]]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(roles: frozenset[Role] = frozenset({Role.CHAT_JOB_EXECUTOR}),
                    **overrides: Any) -> Gateway:  # fmt: skip
        settings = Settings(
            data_dir=tmp_path / "data",
            routing_refresh_s=0.05,
            **{"upstream_first_byte_timeout_s": 2.0, "upstream_idle_timeout_s": 1.0, **overrides},
        )
        app = create_app(settings, roles, store=store)
        port = free_port()
        # The server aif runs: its protocol, limits and direct body path.
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, log_level="warning", **server_options(settings)
            )
        )
        task = asyncio.create_task(server.serve())
        servers.append((server, task))
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        return Gateway(f"http://127.0.0.1:{port}", store, app.state)

    yield start
    for server, task in servers:
        server.should_exit = True
        await task
