"""The chat-job-executor role: serves each inference request on a ready instance.

A request names a model; the routing table (:mod:`.routing`) says where it runs. The model's
gate (:mod:`.admission`) admits it or makes it wait briefly, its key's fair share of the queue,
else refuses it with 429. The
model's policy orders the available instances, and the request goes to the first: a failure
before the first byte (connect error, reset, timeout, a 5xx or 429 from the engine) is retried
on the next, up to ``AIF_UPSTREAM_RETRIES`` more; when none can serve, the answer is a 502
(or a 429 when every one was saturated) that lists what each said. Once bytes flow the answer
belongs to that instance; if it breaks, the stream ends with an SSE error event. An instance
that keeps failing is ejected from routing for a while (:class:`~.routing.Instance`); one that
sends nothing for ``AIF_UPSTREAM_IDLE_TIMEOUT_S`` has its answer ended by the watchdog.
What users see is measured here (:mod:`.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from api.chat_job_executor.admission import AdmissionRule
from api.chat_job_executor.engine_load import EngineLoadPoller
from api.chat_job_executor.metrics import GatewayMetrics
from api.chat_job_executor.routing import (
    POLICIES,
    Ejection,
    Instance,
    RequestInfo,
    Route,
    RoutingPolicy,
    RoutingTable,
    make_policy,
)
from api.errors import ModelNotFound, ModelNotReady, Overloaded, UpstreamError
from api.relay import Exchange, Outcome, Timeouts, UpstreamClient
from api.upstream import Answer, UpstreamPool
from domain.keys import ACTIVATOR, SHARED_FLOW, AuditEvent
from domain.presets import instance_capacity
from domain.records import ModelRecord, ModelStatus
from domain.settings import Settings
from domain.store import ModelStore, audit, rewrite
from domain.wakeup import Wakeup

logger = logging.getLogger(__name__)

# How much of an engine's error body a failure message quotes.
ERROR_SNIPPET_BYTES = 300


class ChatJobExecutor:
    """The role: a routing table kept fresh from the store, and :meth:`serve` on it.

    ``start`` loads the table and keeps refreshing it (each ``routing_refresh_s``, and soon
    after :meth:`notify_change`), and watches answers for stalls; ``stop`` ends both and
    closes the upstream connections. A request that must wait for a slot, or that finds more in
    flight than the instances hold within the SLO (``scaling.capacity``), calls ``on_pressure``
    with its model's name (the task-executor-manager's nudge in one process, a report over
    HTTP in another).
    """

    def __init__(
        self,
        store: ModelStore,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        on_write: Callable[[], None] = lambda: None,
        on_pressure: Callable[[str], None] = lambda name: None,
    ) -> None:
        self._store = store
        self._on_pressure = on_pressure
        self._settings = settings
        self._refresh_interval_s = settings.routing_refresh_s
        self._timeouts = Timeouts(
            first_byte_s=settings.upstream_first_byte_timeout_s,
            idle_s=settings.upstream_idle_timeout_s,
        )
        self._ejection = Ejection(
            settings.ejection_failures, settings.ejection_base_s, settings.ejection_max_s
        )
        self._admission = AdmissionRule(
            settings.admission_queue_per_instance, settings.admission_wait_s,
            settings.admission_fair,
        )  # fmt: skip
        # Requests go through aif's own client; engines' /metrics through aiohttp's.
        self._pool = UpstreamPool(
            connect_timeout_s=settings.upstream_connect_timeout_s,
            keepalive_s=settings.upstream_keepalive_s,
        )
        self._client = UpstreamClient(
            connect_timeout_s=settings.upstream_connect_timeout_s,
            keepalive_s=settings.upstream_keepalive_s,
        )
        self._policies: dict[str, RoutingPolicy] = {name: make_policy(name) for name in POLICIES}
        self.table = RoutingTable(
            default_policy=settings.routing_policy, capacity_of=self._capacity_of
        )
        self.metrics = GatewayMetrics(registry or CollectorRegistry(), self.table.routes)
        self._active: set[Exchange] = set()
        self._changed = Wakeup()
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshed_at = 0.0
        self._miss_lock = asyncio.Lock()
        self._rebuilt = asyncio.Event()
        self._on_write = on_write

    def _capacity_of(self, record: ModelRecord) -> int:
        """This process's share of an instance: chat workers admit ``1/AIF_CHAT_WORKERS``
        of it each (rounded up), so together they admit what the instance takes."""
        whole = instance_capacity(record.type, self._settings.max_in_flight_per_instance)
        return -(-whole // self._settings.chat_workers)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._changed.bind()
        await self._client.start()
        await self.refresh()
        poller = EngineLoadPoller(self.table.routes)
        self._tasks = [
            asyncio.create_task(self._refresh_loop(), name="chat-job-executor-refresh"),
            asyncio.create_task(self._watchdog(), name="chat-job-executor-watchdog"),
            asyncio.create_task(poller.run(lambda: self._client.session), name="engine-load"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pool.close()
        await self._client.close()

    def notify_change(self) -> None:
        """Rebuild the table soon: called, from any thread, after a write in this process."""
        self._changed.set()

    async def refresh(self) -> None:
        self._refreshed_at = time.monotonic()
        self.table.rebuild(await asyncio.to_thread(self._store.list))
        self._pool.retain({i.url for route in self.table.routes() for i in route.instances})
        # Wake held requests: each waits on the event of the table it last saw.
        rebuilt, self._rebuilt = self._rebuilt, asyncio.Event()
        rebuilt.set()

    async def _refresh_loop(self) -> None:
        while True:
            await self._changed.wait(self._refresh_interval_s)
            try:
                await self.refresh()
            except Exception:
                logger.exception("routing table refresh failed; keeping the previous table")

    async def _watchdog(self) -> None:
        """End answers whose instance sent nothing for the idle timeout."""
        period_s = min(1.0, self._timeouts.idle_s / 4)
        while True:
            await asyncio.sleep(period_s)
            deadline = time.monotonic() - self._timeouts.idle_s
            for exchange in list(self._active):
                if exchange.response_started and exchange.last_activity < deadline:
                    exchange.stalled()

    # --- serving -------------------------------------------------------------------------

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

    async def _serving_route(self, request: dict[str, Any]) -> Route:
        name = request.get("model")
        if not isinstance(name, str) or not name:
            raise ModelNotFound("the request names no model; set 'model'", param="model")
        route = await self._route(name)
        if route is None:
            # Other models are not named: a caller may not be allowed to see them.
            raise ModelNotFound(
                f"model {name!r} does not exist; GET /v1/models lists the models you can use",
                param="model",
            )
        if route.serving:
            return route
        if not route.coming or self._settings.hold_timeout_s == 0:
            raise _not_serving(route)
        return await self._hold(route)

    async def _hold(self, route: Route) -> Route:
        """Wait for the model's first ready instance, starting one if it has scaled to zero."""
        gate, name = route.gate, route.name
        deadline = time.monotonic() + self._settings.hold_timeout_s
        gate.held += 1
        try:
            if route.desired_instances == 0:
                await asyncio.to_thread(self._wake, route.model_id)
            while True:
                rebuilt = self._rebuilt
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _not_serving(route, self._settings.hold_timeout_s)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await rebuilt.wait()
                current = self.table.lookup(name)
                if current is None:
                    raise ModelNotFound(f"model {name!r} was deleted", param="model")
                route = current
                if route.serving:
                    return route
                if not route.coming:
                    raise _not_serving(route)
        finally:
            gate.held -= 1

    def _wake(self, model_id: str) -> None:
        """A request for a model scaled to zero: ask for an instance (the activator's job)."""

        def wake(record: ModelRecord) -> ModelRecord | None:
            if record.replicas > 0 or record.deleting:
                return None
            record.replicas = record.within_bounds(1)
            record.generation += 1
            record.status = ModelStatus.DEPLOYING
            record.status_msg = "starting an instance for a waiting request"
            record.touch()
            return record

        result = rewrite(self._store, model_id, wake)
        if result is not None and result[1]:
            stored = result[0]
            logger.info("waking model from zero model=%s replicas=%d", model_id, stored.replicas)
            self._on_write()
            reason = "a request for a model scaled to zero"
            event = AuditEvent.scale(ACTIVATOR, stored.id, stored.name, 0, stored.replicas, reason)
            audit(self._store, event)

    async def serve(
        self, exchange: Exchange, path: str, request: dict[str, Any], body: bytes
    ) -> None:
        """Answer ``exchange`` with ``body`` served by an instance of ``request["model"]``."""
        route = await self._serving_route(request)
        gate, capacity = route.gate, route.capacity
        if gate.full(capacity) or route.beyond_slo_capacity():
            self._on_pressure(route.name)  # the scaler looks at this model now
        flow = exchange.flow if self._admission.fair else SHARED_FLOW
        try:
            await gate.acquire(
                capacity, self._admission.queue_per_instance * len(route.instances),
                self._admission.wait_s, flow,
            )  # fmt: skip
        except Overloaded:
            self.metrics.rejected.labels(route.name, "overloaded").inc()
            self.metrics.overloaded.labels(route.name, flow.priority).inc()
            self.metrics.requests.labels(route.name, "429").inc()
            raise
        self._active.add(exchange)
        try:
            outcome = await self._attempt(
                exchange, route, path, body, self._info(request, exchange)
            )
        finally:
            self._active.discard(exchange)
            gate.release(route.capacity)
        self._observe(route, exchange, outcome)

    def _info(self, request: dict[str, Any], exchange: Exchange) -> RequestInfo:
        session = exchange.header(b"x-session-id")
        key = affinity_key(request, session, self._settings.prefix_affinity_chars)
        return RequestInfo(affinity=key)

    async def _attempt(
        self, exchange: Exchange, route: Route, path: str, body: bytes, info: RequestInfo
    ) -> Outcome:
        policy = self._policies.get(route.policy) or self._policies["least-outstanding"]
        candidates = policy.order(route, info, time.monotonic())
        failures: list[str] = []
        saturated = 0
        for instance in candidates[: 1 + self._settings.upstream_retries]:
            instance.in_flight += 1
            try:
                failure, upstream = await self._open(instance, path, body)
                if upstream is None:
                    saturated += failure.startswith("HTTP 429")
                    failures.append(f"{instance.instance_id}: {failure}")
                    continue
                instance.succeeded()
                outcome = await exchange.relay(
                    upstream, instance=instance.instance_id, gaps=self.metrics.gaps[route.name]
                )
                if outcome.failure:
                    self._failed(instance, outcome.failure)
                return outcome
            finally:
                instance.in_flight -= 1
        self.metrics.rejected.labels(route.name, "no_instance").inc()
        tried = "; ".join(failures)
        if failures and saturated == len(failures):
            self.metrics.requests.labels(route.name, "429").inc()
            raise Overloaded(f"every instance of model {route.name!r} is saturated: {tried}",
                             retry_after_s=1)  # fmt: skip
        self.metrics.requests.labels(route.name, "502").inc()
        raise UpstreamError(f"no instance of model {route.name!r} could serve the request: {tried}")

    async def _open(self, instance: Instance, path: str, body: bytes) -> tuple[str, Answer | None]:
        """Send the request; (why it failed, None) when the instance cannot take it."""
        try:
            upstream = await self._pool.post(
                instance.url, path, body, first_byte_s=self._timeouts.first_byte_s
            )
        except TimeoutError:
            failure = f"no answer within {self._timeouts.first_byte_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        else:
            if upstream.status < 500 and upstream.status != 429:
                return "", upstream
            snippet = await _snippet(upstream)
            failure = f"HTTP {upstream.status} {snippet}".strip()
            if upstream.status == 429:
                return failure, None  # saturated, not broken: no mark against it
        self._failed(instance, failure)
        return failure, None

    def _failed(self, instance: Instance, reason: str) -> None:
        if instance.failed(time.monotonic(), self._ejection):
            self.metrics.ejections.labels(instance.model_name, instance.instance_id).inc()
            logger.warning(
                "instance ejected model=%s instance=%s until_s=%.0f reason=%s",
                instance.model_name, instance.instance_id,
                instance.ejected_until - time.monotonic(), reason,
            )  # fmt: skip
        else:
            logger.info(
                "instance failed model=%s instance=%s reason=%s",
                instance.model_name, instance.instance_id, reason,
            )  # fmt: skip

    def _observe(self, route: Route, exchange: Exchange, outcome: Outcome) -> None:
        metrics, name = self.metrics, route.name
        metrics.requests.labels(name, str(outcome.status)).inc()
        if outcome.status >= 400 or not outcome.finished_at or outcome.failure:
            return
        metrics.e2e.labels(name).observe(outcome.finished_at - exchange.started_at)
        if outcome.streamed and outcome.first_byte_at:
            ttft_s = outcome.first_byte_at - exchange.started_at
            metrics.ttft.labels(name).observe(ttft_s)
            tokens = outcome.output_tokens
            if tokens > 1:
                metrics.tpot.labels(name).observe(
                    (outcome.finished_at - outcome.first_byte_at) / (tokens - 1)
                )


def _not_serving(route: Route, waited_s: float | None = None) -> ModelNotReady:
    detail = f": {route.status_msg}" if route.status_msg else ""
    if waited_s is None:
        return ModelNotReady(
            f"model {route.name!r} is {route.status.value} and not serving{detail}",
            param="model",
        )
    return ModelNotReady(
        f"model {route.name!r} has no instance ready after {waited_s:g}s "
        f"({route.status.value}{detail}); retry shortly",
        param="model",
        retry_after_s=5,
    )


def affinity_key(request: dict[str, Any], session: str | None, prefix_chars: int) -> bytes:
    """What the ``prefix`` policy hashes: the session, else the prompt's leading characters."""
    if session:
        return b"session:" + session.encode()
    user = request.get("user")
    if isinstance(user, str) and user:
        return b"user:" + user.encode()
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return prompt[:prefix_chars].encode()
    messages = request.get("messages")
    if isinstance(messages, list):
        text = "".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))[
            :prefix_chars
        ]
        return text.encode()
    return b""


async def _snippet(upstream: Answer) -> str:
    try:
        text = (await upstream.content.read(ERROR_SNIPPET_BYTES)).decode(errors="replace")
    except (aiohttp.ClientError, OSError):
        text = ""
    finally:
        upstream.release()
    return " ".join(text.split())
