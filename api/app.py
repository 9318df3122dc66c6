"""Builds the FastAPI application and, in its lifespan, the roles this process runs.

``aif serve`` runs all four roles in one process; ``aif frontend``, ``aif model-job-executor``,
``aif chat-job-executor`` and ``aif task-executor-manager`` run one each against a shared store.
Clients (the store, the deployer, the gateway's HTTP pool) are built here and nowhere else, and
are handed to the routes through ``app.state`` (see :mod:`api.deps`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from api.chat_job_executor import Gateway
from api.errors import install_error_handlers
from api.middleware import BodySizeLimit
from api.model_job_executor import ModelJobExecutor, RetryPolicy
from api.routes import chat, health, models
from api.services.models import ModelService
from api.store import open_store
from domain.deployment import Deployer
from domain.settings import Settings
from domain.store import ModelStore
from scaler import EngineScrapeSource, PolicyConfig, TaskExecutorManager

logger = logging.getLogger(__name__)


class Role(enum.StrEnum):
    FRONTEND = "frontend"
    MODEL_JOB_EXECUTOR = "model-job-executor"
    CHAT_JOB_EXECUTOR = "chat-job-executor"
    TASK_EXECUTOR_MANAGER = "task-executor-manager"


ALL_ROLES = frozenset(Role)


def build_deployer(settings: Settings) -> Deployer:
    if settings.runtime == "kubernetes":
        from infra.pulumi_deployer import PulumiDeployer

        return PulumiDeployer(settings)
    from api.deployers.local import LocalDeployer

    return LocalDeployer(settings)


def create_app(
    settings: Settings,
    roles: frozenset[Role] = ALL_ROLES,
    *,
    store: ModelStore | None = None,
    deployer_factory: Callable[[Settings], Deployer] = build_deployer,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app_store = store or open_store(settings)
            if store is None:
                stack.callback(app_store.close)
            listeners: list[Callable[[], None]] = []

            def notify_all() -> None:
                for listener in listeners:
                    listener()

            app.state.model_service = ModelService(
                app_store, max_instance_cap=settings.max_instance_cap, on_change=notify_all
            )
            gateway: Gateway | None = None
            if Role.CHAT_JOB_EXECUTOR in roles or Role.FRONTEND in roles:
                gateway = Gateway(
                    app_store,
                    refresh_interval_s=settings.routing_refresh_s,
                    upstream_timeout_s=settings.upstream_timeout_s,
                )
                await gateway.start()
                stack.push_async_callback(gateway.stop)
                listeners.append(gateway.notify_change)
                app.state.gateway = gateway
            if Role.MODEL_JOB_EXECUTOR in roles:
                deployer = deployer_factory(settings)
                stack.push_async_callback(deployer.close)
                await deployer.recover()
                executor = ModelJobExecutor(
                    app_store,
                    deployer,
                    interval_s=settings.reconcile_interval_s,
                    lease_ttl_s=settings.lease_ttl_s,
                    retry=RetryPolicy(
                        settings.max_attempts, settings.backoff_base_s, settings.backoff_max_s
                    ),
                    # What the executor observes (ACTIVE, endpoints) reaches routing at once.
                    on_observed=gateway.notify_change if gateway else lambda: None,
                )
                await executor.start()
                stack.push_async_callback(executor.stop)
                listeners.append(executor.notify_change)
                app.state.executor = executor
            if Role.TASK_EXECUTOR_MANAGER in roles:
                source = EngineScrapeSource()
                stack.push_async_callback(source.close)
                manager = TaskExecutorManager(
                    app_store,
                    source,
                    interval_s=settings.scale_interval_s,
                    policy=PolicyConfig(
                        upscale_delay_s=settings.scale_upscale_delay_s,
                        downscale_delay_s=settings.scale_downscale_delay_s,
                    ),
                    on_change=notify_all,
                )
                await manager.start()
                stack.push_async_callback(manager.stop)
            logger.info("aif started roles=%s", sorted(r.value for r in roles))
            yield

    app = FastAPI(
        title="aif",
        summary="Register, deploy, scale and serve large language models.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.max_body_bytes)
    app.include_router(health.router)
    if Role.FRONTEND in roles:
        app.include_router(models.router)
    if Role.FRONTEND in roles or Role.CHAT_JOB_EXECUTOR in roles:
        app.include_router(chat.router)
    return app
