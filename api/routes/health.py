"""``/health`` (liveness) and ``/ready`` (readiness), for probes and load balancers.

``/health`` touches nothing: not the store, not a thread, so it answers while the store is
locked or every store thread is busy. ``/ready`` asks the store whether it would take a write
now, within ``AIF_READY_TIMEOUT_S``, and answers 503 with ``Retry-After`` when it cannot.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from api.errors import StoreUnavailableError, log_failure
from api.store import CheckableStore
from api.store.pool import StorePool

router = APIRouter(tags=["health"])

_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"description": "the store cannot answer now (Retry-After says when to ask again)"},
    500: {"description": "the store is damaged (the message names the file and what to do)"},
}


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", responses=_NOT_READY)
async def ready(request: Request) -> dict[str, str]:
    store = getattr(request.app.state, "store", None)
    if isinstance(store, CheckableStore):
        pool: StorePool = request.app.state.store_pool
        timeout_s: float = request.app.state.ready_timeout_s
        try:
            await asyncio.wait_for(pool.run(store.check, timeout_s), timeout_s)
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"the model store did not answer within {timeout_s:g}s", retry_after_s=1
            ) from exc
        except Exception as exc:
            raise log_failure(exc, "GET", "/ready") from exc
    return {"status": "ready"}
