"""What the task-executor-manager knows of a model's load: :class:`LoadSnapshot`, and its sources.

Latency is measured at the gateway, where users feel it: its ``aif_*`` series (see the
chat-job-executor's metrics) give p95 time to first token, p95 time per output token (per
request, as a client measures it), the request rate, and requests in flight and queued. The
engines' own gauges (``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``) add what
only they know, where they export it.

``MetricsSource`` is the seam; its implementations:

- :class:`scaler.prometheus_source.PrometheusSource`: PromQL against a Prometheus that scrapes
  the gateways and the engines (discovered through :mod:`scaler.discovery`).
- :class:`scaler.gateway_source.GatewaySource`: without a Prometheus, the same figures from the
  gateway's metric families, in process or over HTTP, windowed here as PromQL would.

This module holds what they share: the snapshot, the protocol, the metric names and
:func:`histogram_quantile`, Prometheus's estimate of a quantile from cumulative buckets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from domain.records import ModelRecord

# The gateway's series (label ``model``).
TTFT_HISTOGRAM = "aif_time_to_first_token_seconds"
TPOT_HISTOGRAM = "aif_request_time_per_output_token_seconds"
REQUESTS_COUNTER = "aif_requests_total"
# Gaps between streamed chunks: its count's rate is the tokens generated per second.
ITL_HISTOGRAM = "aif_inter_token_latency_seconds"
IN_FLIGHT_GAUGE = "aif_requests_in_flight"
QUEUED_GAUGE = "aif_requests_queued"
# The engines' series (label ``model_name``), vLLM's names.
ENGINE_WAITING_GAUGE = "vllm:num_requests_waiting"
ENGINE_RUNNING_GAUGE = "vllm:num_requests_running"
ENGINE_KV_USAGE_GAUGE = "vllm:kv_cache_usage_perc"

QUANTILE = 0.95


@dataclass(frozen=True)
class LoadSnapshot:
    """One model's load over the source's window, as users saw it at the gateway."""

    # None: no streamed request finished in the window.
    ttft_p95_ms: float | None = None
    # Per request, (e2e - TTFT) / (tokens - 1), as the client measures it.
    tpot_p95_ms: float | None = None
    # Requests answered per second over the window; 0.0 = idle.
    request_rate: float = 0.0
    # Requests being served at the gateway, now.
    in_flight: float = 0.0
    # Requests waiting at the gateway (admission queue, or held for an instance to start).
    queued: float = 0.0
    # The engines' own queue, summed, where they export it.
    engine_waiting: float | None = None
    # The engines' KV cache usage (0..1), mean, where they export it.
    kv_usage: float | None = None
    # Requests answered in all, now (the counter itself): a change between two reads is an
    # answer between them, which the windowed rate need not show. None: not known.
    answered_total: float | None = None
    # Generated tokens per second over the window, all instances; None: not known.
    tokens_per_s: float | None = None


class MetricsSource(Protocol):
    """Where the task-executor-manager reads a model's load from."""

    async def fetch(self, record: ModelRecord) -> LoadSnapshot | None:
        """The model's load now; None when it cannot be read (the scaler then holds)."""
        ...

    async def close(self) -> None:
        """Release connections; the manager calls it when it stops."""
        ...


def histogram_quantile(quantile: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's estimate from cumulative ``le`` bucket counts; None without observations."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return bounds[-1]


def seconds_to_ms(value: float | None) -> float | None:
    return None if value is None else value * 1000
