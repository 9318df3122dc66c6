"""``/metrics`` (this process's Prometheus series) and ``/discovery/prometheus`` (what to scrape).

The discovery route answers Prometheus's ``http_sd_configs``: this process when it serves
inference (its ``/metrics`` has the gateway's latency histograms), and every ready instance of
every model, labelled with the model, so one scrape config follows every scale change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.errors import ErrorResponse
from domain.store import ModelStore
from scaler import http_sd_groups

router = APIRouter(tags=["metrics"])

# Only with AIF_METRICS_REQUIRE_KEY, and once any key exists (api.auth).
_KEYED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no valid API key (AIF_METRICS_REQUIRE_KEY)"},
}


@router.get("/metrics", response_class=Response, responses=_KEYED)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/discovery/prometheus", responses=_KEYED)
async def prometheus_targets(request: Request) -> list[dict[str, Any]]:
    """Prometheus ``http_sd`` target groups: the gateway(s) and every ready instance."""
    store: ModelStore = request.app.state.store
    records = await asyncio.to_thread(store.list)
    gateways: list[str] = request.app.state.gateways
    return [dict(group) for group in http_sd_groups(gateways, records)]
