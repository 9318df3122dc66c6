"""The chat-job-executor: forwards OpenAI inference requests to a model's ready instances.

:class:`ChatJobExecutor` keeps the routing table fresh in the background and proxies a request body
as it came to the instance the policy picks, streaming the answer back chunk by chunk as it
arrives. A connection refused before the first byte is retried on the next instance; once
bytes flow, the stream belongs to that instance. When the client goes away the upstream
request is closed, which cancels the work in the engine. Admission control and load-aware
policies plug into :mod:`api.routing`; the streamed answer is :mod:`api.upstream`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx

from api.errors import ModelNotFound, ModelNotReady, UpstreamError
from api.routing import RoundRobin, Route, RoutingPolicy, RoutingTable
from api.upstream import CONNECT_TIMEOUT_S, UpstreamResponse, upstream_headers
from api.wakeup import Wakeup
from domain.store import ModelStore

logger = logging.getLogger(__name__)


class ChatJobExecutor:
    """The role: a routing table kept fresh from the store, and :meth:`forward` on it.

    ``start`` loads the table and keeps refreshing it (each ``refresh_interval_s``, and soon
    after :meth:`notify_change`); ``stop`` ends that and closes the upstream connections.
    """

    def __init__(
        self,
        store: ModelStore,
        *,
        refresh_interval_s: float,
        upstream_timeout_s: float,
        policy: RoutingPolicy | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._store = store
        self._refresh_interval_s = refresh_interval_s
        self._policy = policy or RoundRobin()
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(upstream_timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        self.table = RoutingTable()
        self._changed = Wakeup()
        self._task: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0
        self._miss_lock = asyncio.Lock()

    async def refresh(self) -> None:
        self._refreshed_at = time.monotonic()
        self.table.rebuild(await asyncio.to_thread(self._store.list))

    async def _route(self, name: str) -> Route | None:
        """The model's route; on a miss, read the store once more before answering no.

        A model that just became ACTIVE (or was just registered) must route at once, not one
        refresh interval later. Concurrent misses share one read: a miss waits for a read
        that started after it arrived, and starts one only if there is none.
        """
        route = self.table.lookup(name)
        if route is not None and route.serving:
            return route
        arrived_at = time.monotonic()
        async with self._miss_lock:
            if self._refreshed_at < arrived_at:
                await self.refresh()
        return self.table.lookup(name)

    def notify_change(self) -> None:
        """Rebuild the table soon: called, from any thread, after a write in this process."""
        self._changed.set()

    async def start(self) -> None:
        self._changed.bind()
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_loop(), name="gateway-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _refresh_loop(self) -> None:
        while True:
            await self._changed.wait(self._refresh_interval_s)
            try:
                await self.refresh()
            except Exception:
                logger.exception("routing table refresh failed; keeping the previous table")

    async def forward(self, path: str, request: dict[str, Any], body: bytes) -> UpstreamResponse:
        """Send ``body`` to an instance of ``request["model"]`` and return its answer."""
        name = request.get("model")
        if not isinstance(name, str) or not name:
            raise ModelNotFound("the request names no model; set 'model'", param="model")
        route = await self._route(name)
        if route is None:
            available = ", ".join(self.table.names()) or "none registered"
            raise ModelNotFound(
                f"model {name!r} does not exist; available models: {available}", param="model"
            )
        if not route.serving:
            detail = f": {route.status_msg}" if route.status_msg else ""
            raise ModelNotReady(
                f"model {name!r} is {route.status.value} and not serving yet{detail}",
                param="model",
            )
        last_error: Exception | None = None
        for endpoint in self._policy.order(route, request):
            upstream = self._client.build_request(
                "POST",
                endpoint.url + path,
                content=body,
                headers=upstream_headers(),
            )
            try:
                response = await self._client.send(upstream, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                logger.warning(
                    "instance unreachable, trying the next one model=%s instance=%s error=%s",
                    name, endpoint.instance_id, exc,
                )  # fmt: skip
                last_error = exc
                continue
            return UpstreamResponse(response)
        raise UpstreamError(f"no instance of model {name!r} could be reached: {last_error}")
