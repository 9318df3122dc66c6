"""The simulator's HTTP server: vLLM's OpenAI-compatible routes as a Starlette app.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream`` true or false),
``GET /v1/models``, ``GET /health`` (503 while starting up or marked unhealthy),
``GET /metrics`` (Prometheus text) and ``GET|POST /admin/faults`` (failure injection at run
time). Routes only parse, call :class:`~simulator.completions.CompletionService`
and frame the answer; every :class:`~simulator.errors.SimulatorError` becomes an
OpenAI-shaped error body in one handler. The engine's step loop starts in the app's lifespan.
Running the app under uvicorn is left to :mod:`simulator.__main__`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from simulator import protocol
from simulator.completions import CompletionService
from simulator.config import EngineConfig, Faults
from simulator.engine import Clock, Engine, Sleep
from simulator.errors import (
    BadRequest,
    EngineNotReady,
    InjectedFailure,
    SimulatorError,
)
from simulator.metrics import METRICS_CONTENT_TYPE, EngineMetrics
from simulator.protocol import ChatCompletionRequest, CompletionRequest, FaultsUpdate

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

# What a real engine exits with when its card fails (vLLM's worker dies, the server exits 1).
DEVICE_FAULT_EXIT_CODE = 1
# Long enough for the answer to POST /admin/faults to leave before the process dies.
DEVICE_FAULT_EXIT_DELAY_S = 0.05

# Proxies must pass stream chunks through as they come rather than buffer them.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SimulatorServer:
    """The app's state and route handlers: one engine, its metrics, its faults."""

    def __init__(
        self,
        config: EngineConfig,
        faults: Faults,
        startup_delay_s: float,
        seed: int = 0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.faults = faults
        self.startup_delay_s = startup_delay_s
        self._clock = clock
        self.metrics = EngineMetrics(config.served_model_name, config.max_model_len)
        self.engine = Engine(config, self.metrics, clock=clock, sleep=sleep)
        self.metrics.bind_load(self.engine.scheduler)
        self.service = CompletionService(self.engine, config, faults, seed)
        self._ready_at: float | None = None
        self._created = int(time.time())

    @property
    def started(self) -> bool:
        """The simulated model load is over (the startup delay has passed)."""
        return self._ready_at is not None and self._clock() >= self._ready_at

    @property
    def healthy(self) -> bool:
        return self.started and self.engine.running and self.faults.healthy

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.engine.start()
        self._ready_at = self._clock() + self.startup_delay_s
        logger.info(
            "simulator for %s listening; ready in %.2fs (max_num_seqs=%d, kv_cache_blocks=%d)",
            self.config.served_model_name,
            self.startup_delay_s,
            self.config.max_num_seqs,
            self.config.kv_cache_blocks,
        )
        try:
            yield
        finally:
            await self.engine.stop()
            logger.info("simulator for %s stopped", self.config.served_model_name)

    def app(self) -> Starlette:
        routes = [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/admin/faults", self.get_faults, methods=["GET"]),
            Route("/admin/faults", self.set_faults, methods=["POST"]),
        ]
        app = Starlette(routes=routes, lifespan=self.lifespan)
        app.add_exception_handler(SimulatorError, _error_response)
        app.state.simulator = self
        return app

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, await _parse(request, ChatCompletionRequest))

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, await _parse(request, CompletionRequest))

    async def _generate(
        self, request: Request, body: ChatCompletionRequest | CompletionRequest
    ) -> Response:
        if not self.started:
            raise EngineNotReady("The model is still loading.")
        prepared = self.service.prepare(body)
        if body.stream:
            return StreamingResponse(
                self.service.stream(prepared),
                media_type="text/event-stream",
                headers=STREAM_HEADERS,
            )
        result = await self.service.complete(prepared, lambda: _disconnected(request))
        if result is None:
            # The client is gone; nobody reads this (499 is the usual log code for it).
            return Response(status_code=499)
        return JSONResponse(result)

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            protocol.model_list(
                self.config.served_model_name, self.config.max_model_len, self._created
            )
        )

    async def health(self, request: Request) -> Response:
        return Response(status_code=200 if self.healthy else 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(self.faults.snapshot())

    async def set_faults(self, request: Request) -> Response:
        update = await _parse(request, FaultsUpdate)
        if update.error_rate is not None:
            self.faults.error_rate = update.error_rate
        if "stall_after_tokens" in update.model_fields_set:
            self.faults.stall_after_tokens = update.stall_after_tokens
        if update.healthy is not None:
            self.faults.healthy = update.healthy
        logger.info("faults changed to %s", self.faults.snapshot())
        if update.device_fault:
            asyncio.get_running_loop().call_later(DEVICE_FAULT_EXIT_DELAY_S, _device_fault)
            return JSONResponse({**self.faults.snapshot(), "device_fault": True})
        return JSONResponse(self.faults.snapshot())


def _device_fault() -> None:
    """Die as an engine on a failed card does: the runtime's error, then exit at once (no
    graceful shutdown: open streams are cut)."""
    ascend = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    visible = ascend if ascend is not None else os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    device = (visible.split(",")[0] or "0").strip()
    kind = "NPU" if ascend is not None else "GPU"
    logger.error(
        "device fault on %s %s: aclrtSynchronizeStream failed, error code 507035 "
        "(device hardware error); the engine exits", kind, device,
    )  # fmt: skip
    sys.stderr.flush()
    os._exit(DEVICE_FAULT_EXIT_CODE)


def build_app(
    config: EngineConfig,
    faults: Faults | None = None,
    startup_delay_s: float = 0.0,
    seed: int = 0,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> Starlette:
    """The simulator as an ASGI app; its step loop runs while the app's lifespan is open."""
    server = SimulatorServer(
        config, faults if faults is not None else Faults(), startup_delay_s, seed, clock, sleep
    )
    return server.app()


async def _parse(request: Request, model: type[ModelT]) -> ModelT:
    raw = await request.body()
    try:
        data: Any = json.loads(raw)
    except ValueError as error:
        raise BadRequest(f"The request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        message = "; ".join(_describe(problem["loc"], problem["msg"]) for problem in problems)
        param = ".".join(map(str, problems[0]["loc"])) if problems else ""
        raise BadRequest(message, param=param or None) from None


def _describe(loc: tuple[int | str, ...], msg: str) -> str:
    """``messages.0.role: Field required``; checks on the whole body read without a location."""
    msg = msg.removeprefix("Value error, ")
    return f"{'.'.join(map(str, loc))}: {msg}" if loc else msg


async def _disconnected(request: Request) -> None:
    """Return once the client has gone away (the request body must have been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _error_response(request: Request, error: Exception) -> Response:
    assert isinstance(error, SimulatorError)  # registered for SimulatorError only
    if error.status_code >= 500 and not isinstance(error, InjectedFailure):
        logger.warning("%s %s: %s", request.method, request.url.path, error.message)
    return JSONResponse(error.body(), status_code=error.status_code)
