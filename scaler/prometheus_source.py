"""Load read from a Prometheus that scrapes the gateways and the engines.

Prometheus finds them through :func:`scaler.discovery.http_sd_groups` (served by the
application for ``http_sd_configs``): the gateways' ``aif_*`` series carry the model in label
``model``, and every engine target is labelled ``model_name`` with the model's name, so the
engines' ``vllm:*`` gauges are found by name whatever the engine calls itself.

Per model ``M`` and window ``W`` (``window_s``), :class:`PrometheusSource` asks:

- ``histogram_quantile(0.95, sum by (le) (rate(aif_time_to_first_token_seconds_bucket
  {model="M"}[W])))``, and the same for ``aif_request_time_per_output_token_seconds``;
- ``sum(rate(aif_requests_total{model="M"}[W]))``, and ``sum(aif_requests_total{model="M"})``
  (whether a request was answered since the last pass);
- ``sum(aif_requests_in_flight{model="M"})``, ``sum(aif_requests_queued{model="M"})``;
- ``sum(vllm:num_requests_waiting{model_name="M"})``,
  ``avg(vllm:kv_cache_usage_perc{model_name="M"})``; either name also spelt with ``_`` for
  ``:``, as recent ``prometheus_client`` versions write them when Prometheus asks for
  OpenMetrics.

An empty answer or NaN means no traffic: no percentile (None), a zero rate or gauge, no engine
figure (None). ``prometheus-api-client`` is blocking, so the queries run in a thread, one after
the other, each bounded by ``timeout_s`` and never retried: a failed query makes the fetch
return None (the scaler holds), logged once per failure streak.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from domain.records import ModelRecord
from scaler.metrics import (
    ENGINE_KV_USAGE_GAUGE,
    ENGINE_WAITING_GAUGE,
    IN_FLIGHT_GAUGE,
    QUANTILE,
    QUEUED_GAUGE,
    REQUESTS_COUNTER,
    TPOT_HISTOGRAM,
    TTFT_HISTOGRAM,
    LoadSnapshot,
    seconds_to_ms,
)

logger = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 5


def promql_string(value: str) -> str:
    """``value`` as a double-quoted PromQL string literal (Go's escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def queries(model: str, window_s: float) -> dict[str, str]:
    """The PromQL for each :class:`LoadSnapshot` field, for ``model`` over ``window_s``."""
    gateway = f"{{model={promql_string(model)}}}"

    def engine(name: str) -> str:
        # Either spelling: prometheus_client (0.26) writes ``:`` as ``_`` in OpenMetrics samples.
        spellings = f"{name}|{name.replace(':', '_')}"
        return f"{{__name__=~{promql_string(spellings)},model_name={promql_string(model)}}}"

    window = f"[{max(1, round(window_s))}s]"

    def p95(histogram: str) -> str:
        return (
            f"histogram_quantile({QUANTILE}, sum by (le) "
            f"(rate({histogram}_bucket{gateway}{window})))"
        )

    return {
        "ttft_p95_ms": p95(TTFT_HISTOGRAM),
        "tpot_p95_ms": p95(TPOT_HISTOGRAM),
        "request_rate": f"sum(rate({REQUESTS_COUNTER}{gateway}{window}))",
        "answered_total": f"sum({REQUESTS_COUNTER}{gateway})",
        "in_flight": f"sum({IN_FLIGHT_GAUGE}{gateway})",
        "queued": f"sum({QUEUED_GAUGE}{gateway})",
        "engine_waiting": f"sum({engine(ENGINE_WAITING_GAUGE)})",
        "kv_usage": f"avg({engine(ENGINE_KV_USAGE_GAUGE)})",
    }


def scalar(result: list[dict[str, Any]]) -> float | None:
    """The value of a one-element instant vector; None when empty or NaN (no traffic)."""
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


class PrometheusSource:
    """A model's load from PromQL; see the module's docstring."""

    def __init__(
        self,
        url: str,
        window_s: float = 60.0,
        *,
        timeout_s: float = QUERY_TIMEOUT_S,
        connect: Callable[[str], PrometheusConnect] | None = None,
    ) -> None:
        self._window_s = window_s
        self._prometheus = (connect or self._connect)(url)
        self._timeout_s = timeout_s
        self._failing = False

    def _connect(self, url: str) -> PrometheusConnect:
        return PrometheusConnect(url=url, retry=Retry(total=0, raise_on_status=False))

    async def close(self) -> None:
        self._prometheus._session.close()

    async def fetch(self, record: ModelRecord) -> LoadSnapshot | None:
        try:
            values = await asyncio.to_thread(self._query_all, record.name)
        except Exception as exc:
            if not self._failing:
                logger.warning("Prometheus could not be queried (holding): %s", exc)
            self._failing = True
            return None
        if self._failing:
            logger.info("Prometheus answers again")
        self._failing = False
        return LoadSnapshot(
            ttft_p95_ms=seconds_to_ms(values["ttft_p95_ms"]),
            tpot_p95_ms=seconds_to_ms(values["tpot_p95_ms"]),
            request_rate=values["request_rate"] or 0.0,
            answered_total=values["answered_total"],
            in_flight=values["in_flight"] or 0.0,
            queued=values["queued"] or 0.0,
            engine_waiting=values["engine_waiting"],
            kv_usage=values["kv_usage"],
        )

    def _query_all(self, model: str) -> dict[str, float | None]:
        return {
            field: scalar(self._prometheus.custom_query(query, timeout=self._timeout_s))
            for field, query in queries(model, self._window_s).items()
        }
