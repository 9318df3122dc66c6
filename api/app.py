"""Builds the FastAPI application and, in its lifespan, the roles this process runs.

Each role is a class with ``start``/``stop`` in a module named for it:

============================  ======================================================
frontend                      :class:`api.frontend.Frontend`
model-job-executor            :class:`api.model_job_executor.ModelJobExecutor`
chat-job-executor             :class:`api.chat_job_executor.ChatJobExecutor`
task-executor-manager         :class:`scaler.task_executor_manager.TaskExecutorManager`
============================  ======================================================

``aif serve`` runs all four in one process; ``aif <role>`` runs one against a shared store.
Clients (the store, the deployer, HTTP pools) are built here and nowhere else, and reach the
routes through ``app.state`` (see :mod:`api.deps`).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from api.accelerators import Accelerators, InventoryCollector
from api.auth import KeyCheck, KeyRing, Limiter
from api.chat_job_executor import ChatJobExecutor
from api.chat_job_executor.pressure_report import PressureReporter
from api.cluster_accelerators import ClusterAccelerators
from api.errors import error_responses, install_error_handlers
from api.frontend import Frontend
from api.limits import build_counters
from api.middleware import BodySizeLimit, JsonDepthLimit, UnexpectedErrors, body_limits
from api.model_job_executor import ModelJobExecutor, RetryPolicy
from api.profiling import ProfileOnReady
from api.routes import accelerators, chat, health, keys, metrics, models, usage
from api.routes import scaler as scaler_routes
from api.server import client_disconnects
from api.services.keys import KeyService
from api.services.models import ModelService
from api.store import open_store
from api.store.pool import StorePool
from api.usage import UsageMetrics, UsageRecorder
from domain.deployment import Deployer
from domain.presets import instance_capacity
from domain.records import ModelRecord
from domain.settings import Settings
from domain.store import ModelStore
from scaler import GatewaySource, MetricsSource, PolicyConfig, PrometheusSource, TaskExecutorManager

logger = logging.getLogger(__name__)


class Role(enum.StrEnum):
    FRONTEND = "frontend"
    MODEL_JOB_EXECUTOR = "model-job-executor"
    CHAT_JOB_EXECUTOR = "chat-job-executor"
    TASK_EXECUTOR_MANAGER = "task-executor-manager"


ALL_ROLES = frozenset(Role)


class RunningRole(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def cluster_inventory(settings: Settings, store: ModelStore, *, acts: bool) -> ClusterAccelerators:
    """The cluster's accelerator inventory, reading nodes and pods with the official client."""
    from infra.node_inventory import KubernetesNodes

    return ClusterAccelerators(settings, store, KubernetesNodes(), acts=acts)


def build_deployer(settings: Settings) -> Deployer:
    if settings.runtime == "kubernetes":
        from infra.pulumi_deployer import PulumiDeployer

        return PulumiDeployer(settings)
    from api.deployers.local import LocalDeployer

    return LocalDeployer(settings)


class AifApp(FastAPI):
    """FastAPI, with the inference routes served ahead of its middleware stack.

    Those two routes are the hot path: each chunk of an answer would otherwise pass through
    every middleware's ``send`` wrapper. They check their own body limit and answer their own
    errors (:class:`api.routes.chat.InferenceEndpoint`); every other route is FastAPI's.
    """

    inference: dict[str, ASGIApp]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.inference.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    roles: frozenset[Role] = ALL_ROLES,
    *,
    store: ModelStore | None = None,
    deployer_factory: Callable[[Settings], Deployer] = build_deployer,
    workers: RunningRole | None = None,
    gateways: list[str] | None = None,
) -> FastAPI:
    """The application of a process running ``roles``.

    ``workers`` (:class:`api.workers.ChatWorkers`) start after the roles and stop before them;
    ``gateways`` are the chat processes' own addresses, this one's first, where their metrics
    are read (default: this process's address, when it serves inference).
    """
    app = AifApp(
        title="aif",
        summary="Register, deploy, scale and serve large language models.",
        version="0.1.0",
        lifespan=_lifespan(settings, roles, store, deployer_factory, workers, gateways),
        # Every error status any route may answer, on every route (api/errors.py).
        responses=error_responses(),
    )
    install_error_handlers(app)
    limits = body_limits(settings)
    app.add_middleware(JsonDepthLimit, limits=limits)
    app.add_middleware(BodySizeLimit, limits=limits)
    # Who calls, before any body is read (the inference routes check it themselves).
    app.add_middleware(KeyCheck, state=app.state, protect_metrics=settings.metrics_require_key)
    # Outermost of ours: whatever no handler took still gets an OpenAI-shaped answer.
    app.add_middleware(UnexpectedErrors)
    app.state.registry = CollectorRegistry()
    # Counted by the HTTP server's protocol (api/server.py), served here at /metrics.
    app.state.disconnects = client_disconnects(app.state.registry)
    app.state.ready_timeout_s = settings.ready_timeout_s
    app.inference = {}
    app.include_router(health.router)
    app.include_router(metrics.router)
    if Role.FRONTEND in roles:
        app.include_router(models.router)
        app.include_router(keys.router)
        app.include_router(usage.router)
        app.include_router(accelerators.router)
    if Role.TASK_EXECUTOR_MANAGER in roles:
        app.include_router(scaler_routes.router)
    if Role.FRONTEND in roles or Role.CHAT_JOB_EXECUTOR in roles:
        # Keys' limits are counted where inference is served, not where it is forwarded from.
        app.state.counts_limits = _runs_chat_job_executor(settings, roles)
        served = chat.endpoints(app.state, limits.inference)
        app.inference = dict(served)
        app.router.routes.extend(chat.routes(served))
        app.openapi_schema = chat.document(app.openapi())
    app.openapi_schema = models.document(app.openapi(), settings.max_instance_cap)
    return app


def _lifespan(
    settings: Settings,
    roles: frozenset[Role],
    store: ModelStore | None,
    deployer_factory: Callable[[Settings], Deployer],
    workers: RunningRole | None,
    gateways: list[str] | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app_store = store or open_store(settings)
            if store is None:
                stack.callback(app_store.close)
            app.state.store = app_store
            # The API's store calls run here, apart from the server's other threads.
            app.state.store_pool = StorePool(settings.store_workers)
            stack.callback(app.state.store_pool.close)
            app.state.gateways = gateways or _gateway_addresses(settings, roles)
            counters = build_counters(settings, app_store, app.state.registry)
            await counters.start()
            stack.push_async_callback(counters.stop)
            app.state.limits = Limiter(counters)
            ring = KeyRing(
                app_store,
                admin_secret=settings.admin_secret(),
                refresh_s=settings.keys_refresh_s,
                limiter=app.state.limits,
            )
            await ring.start()
            stack.push_async_callback(ring.stop)
            app.state.keys = ring
            app.state.key_service = KeyService(app_store, ring)
            # Stopped after the roles (pushed before them): the last requests' usage is written.
            app.state.usage = await _usage_recorder(settings, roles, app_store, app.state, stack)
            # Other chat workers' metrics, which this process's task-executor-manager adds up.
            peers = app.state.gateways[1:] if workers is not None else []
            built = build_roles(settings, roles, app_store, deployer_factory, app.state, peers)
            for role in [*built, *([workers] if workers is not None else [])]:
                await role.start()
                stack.push_async_callback(role.stop)
            logger.info("aif started roles=%s", sorted(r.value for r in roles))
            yield

    return lifespan


def serves_inference(settings: Settings, roles: frozenset[Role]) -> bool:
    """The process answers the inference routes: as a gateway, or forwarding to one."""
    return Role.FRONTEND in roles or Role.CHAT_JOB_EXECUTOR in roles


def _runs_chat_job_executor(settings: Settings, roles: frozenset[Role]) -> bool:
    """The role itself, or a frontend that forwards inference to no other process."""
    return Role.CHAT_JOB_EXECUTOR in roles or (
        Role.FRONTEND in roles and not settings.chat_executor_url
    )


async def _usage_recorder(
    settings: Settings, roles: frozenset[Role], store: ModelStore, state: Any, stack: AsyncExitStack
) -> UsageRecorder | None:
    """Usage is counted once, where a request is served: not by a frontend forwarding it."""
    if not _runs_chat_job_executor(settings, roles):
        return None
    metrics = UsageMetrics(state.registry, per_key=settings.metrics_per_key)
    recorder = UsageRecorder(store, flush_s=settings.usage_flush_s, metrics=metrics)
    await recorder.start()
    stack.push_async_callback(recorder.stop)
    return recorder


def _gateway_addresses(settings: Settings, roles: frozenset[Role]) -> list[str]:
    """Where this process serves inference, as Prometheus on this machine reaches it."""
    if not _runs_chat_job_executor(settings, roles):
        return []
    return [_own_address(settings)]


class _Listeners:
    """Who hears of a write in this process: the loops that should look again at once."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def add(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def notify(self) -> None:
        for listener in self._listeners:
            listener()


def build_roles(
    settings: Settings,
    roles: frozenset[Role],
    store: ModelStore,
    deployer_factory: Callable[[Settings], Deployer],
    state: Any,
    peers: list[str] | None = None,
) -> list[RunningRole]:
    """The roles asked for, in start order, wired to each other; routes' objects on ``state``."""
    changes = _Listeners()
    # A model at capacity at this gateway: the manager in this process decides for it soon.
    nudges: list[Callable[[str], None]] = []

    def pressure(name: str) -> None:
        for nudge in nudges:
            nudge(name)

    built: list[RunningRole] = []
    chat: ChatJobExecutor | None = None
    if _runs_chat_job_executor(settings, roles):
        chat = ChatJobExecutor(
            store, settings, registry=state.registry, on_write=changes.notify, on_pressure=pressure
        )
        changes.add(chat.notify_change)
        state.inference = chat
        built.append(chat)
        not_here = Role.TASK_EXECUTOR_MANAGER not in roles
        if settings.scaler_url and settings.scale_pressure_pass_s > 0 and not_here:
            # The manager is another process: pressure reaches it over HTTP.
            reporter = PressureReporter(
                settings.scaler_url,
                min_gap_s=settings.scale_pressure_pass_s,
                admin_key=settings.admin_secret(),
            )
            nudges.append(reporter.report)
            state.pressure_reporter = reporter
            built.append(reporter)
    if Role.FRONTEND in roles:
        frontend = _frontend(settings, store, chat, changes.notify)
        state.model_service, state.inference = frontend.models, frontend.inference
        built.append(frontend)
        if settings.runtime == "kubernetes" and Role.MODEL_JOB_EXECUTOR not in roles:
            # The executor is another process: this one reads the nodes itself, for the routes.
            built.append(_inventory(state, cluster_inventory(settings, store, acts=False)))
    if Role.MODEL_JOB_EXECUTOR in roles:
        # What the executor observes (ACTIVE, endpoints) reaches routing at once.
        on_observed = chat.notify_change if chat else lambda: None
        on_serving = None
        if settings.profile_on_ready:
            gateway = settings.chat_executor_url or _own_address(settings)
            on_serving = ProfileOnReady(store, settings, gateway)
            built.append(on_serving)
        deployer = _deployer(settings, store, deployer_factory, state, built)
        executor = _model_job_executor(settings, store, deployer, on_observed, on_serving)
        changes.add(executor.notify_change)
        built.append(executor)
    if Role.TASK_EXECUTOR_MANAGER in roles:
        source = _metrics_source(settings, state.registry if chat else None, peers or [])
        manager = _task_executor_manager(settings, store, source, changes.notify, state)
        nudges.append(manager.nudge)
        state.manager = manager
        built.append(manager)
    return built


def _frontend(
    settings: Settings,
    store: ModelStore,
    chat: ChatJobExecutor | None,
    on_change: Callable[[], None],
) -> Frontend:
    registry = ModelService(store, max_instance_cap=settings.max_instance_cap, on_change=on_change)
    return Frontend(registry, inference=chat, settings=settings)


def _inventory(state: Any, inventory: ClusterAccelerators) -> ClusterAccelerators:
    state.accelerators = inventory
    state.registry.register(InventoryCollector(inventory))
    return inventory


def _deployer(
    settings: Settings,
    store: ModelStore,
    deployer_factory: Callable[[Settings], Deployer],
    state: Any,
    built: list[RunningRole],
) -> Deployer:
    """The deployer, with the inventory: a local one places engines on this machine's cards,
    a Kubernetes one keeps models off the nodes whose cards are quarantined."""
    if deployer_factory is not build_deployer:
        return deployer_factory(settings)
    if settings.runtime == "kubernetes":
        from infra.pulumi_deployer import PulumiDeployer

        cluster = _inventory(state, cluster_inventory(settings, store, acts=True))
        built.append(cluster)
        return PulumiDeployer(settings, isolation=cluster)
    from api.deployers.local import LocalDeployer

    inventory = Accelerators(settings, store)
    state.accelerators = inventory
    state.registry.register(InventoryCollector(inventory))
    return LocalDeployer(settings, accelerators=inventory)


def _own_address(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def _model_job_executor(
    settings: Settings, store: ModelStore, deployer: Deployer, on_observed: Callable[[], None],
    on_serving: Callable[[ModelRecord], None] | None = None,
) -> ModelJobExecutor:  # fmt: skip
    return ModelJobExecutor(
        store,
        deployer,
        interval_s=settings.reconcile_interval_s,
        lease_ttl_s=settings.lease_ttl_s,
        retry=RetryPolicy(settings.max_attempts, settings.backoff_base_s, settings.backoff_max_s),
        on_observed=on_observed,
        on_serving=on_serving or (lambda record: None),
    )


def _metrics_source(
    settings: Settings, registry: CollectorRegistry | None, peers: list[str]
) -> MetricsSource:
    """Where the manager reads latency: Prometheus, the gateway in this process (with its
    chat workers' ``peers``), or others'."""
    window_s = settings.scale_window_s
    # One collection a pass, shared by the models it decides; a pass the gateway asks for
    # (pressure) reads a fresh one.
    refresh_s = min(settings.scale_interval_s, settings.scale_pressure_pass_s or math.inf) / 2
    if settings.prometheus_url:
        return PrometheusSource(settings.prometheus_url, window_s)
    if registry is not None and peers:
        client = httpx.AsyncClient(trust_env=False)
        return GatewaySource.from_registry(
            registry, window_s=window_s, refresh_s=refresh_s, peers=peers, client=client
        )
    if registry is not None:
        return GatewaySource.from_registry(registry, window_s=window_s, refresh_s=refresh_s)
    urls = settings.gateway_metrics_urls or [u for u in [settings.chat_executor_url] if u]
    if not urls:
        logger.warning(
            "no gateway to read latency from: set AIF_PROMETHEUS_URL or AIF_GATEWAY_METRICS_URLS; "
            "the task-executor-manager holds every model's replicas until then"
        )
    return GatewaySource.from_urls(
        urls, httpx.AsyncClient(trust_env=False), window_s=window_s, refresh_s=refresh_s
    )


def _task_executor_manager(
    settings: Settings,
    store: ModelStore,
    source: MetricsSource,
    on_change: Callable[[], None],
    state: Any,
) -> TaskExecutorManager:
    return TaskExecutorManager(
        store,
        source,
        interval_s=settings.scale_interval_s,
        pressure_pass_s=settings.scale_pressure_pass_s,
        preempt_settle_s=settings.scale_preempt_settle_s,
        policy=PolicyConfig(
            target_utilisation=settings.scale_target_utilisation,
            panic_window_s=settings.scale_panic_window_s,
            downscale_delay_s=settings.scale_downscale_delay_s,
            upscale_delay_s=settings.scale_upscale_delay_s,
            latency_window_s=settings.scale_window_s,
            idle_window_s=settings.scale_idle_s,
            burst_capacity=settings.scale_burst_capacity,
            probe_ratio=settings.scale_probe_ratio,
            room_ratio=settings.scale_room_ratio,
            lead_window_s=settings.scale_lead_window_s,
        ),
        on_change=on_change,
        capacity_of=lambda record: instance_capacity(
            record.type, settings.max_in_flight_per_instance
        ),
        registry=state.registry,
    )
