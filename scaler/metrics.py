"""Where the task-executor-manager's latency percentiles come from.

``MetricsSource`` is the seam. :class:`EngineScrapeSource` reads every ready instance's
``/metrics`` (vLLM's metric names, which the simulator also serves), keeps the previous
cumulative bucket counts, and computes p95 over the interval between two scrapes the way
PromQL's ``histogram_quantile(0.95, sum by (le) (rate(...)))`` does. A source that cannot
reach an instance logs and leaves it out; no traffic gives ``None``, which means idle.

Some engines serve no ``/metrics`` at all (llama-cpp-python's server answers 404). Such an
instance is noted once at INFO and not asked again for as long as it lives: it contributes
nothing, like an idle one, instead of a warning every interval.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from domain.records import ModelRecord

logger = logging.getLogger(__name__)

TTFT_METRIC = "vllm:time_to_first_token_seconds"
# vLLM renamed the inter-token histogram; older engines only serve the second name.
TPOT_METRICS = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
WAITING_METRIC = "vllm:num_requests_waiting"
RUNNING_METRIC = "vllm:num_requests_running"
SCRAPE_TIMEOUT_S = 2.0
# Answers that mean "this engine has no metrics route", as opposed to a failing scrape.
NO_METRICS_STATUSES = frozenset({404, 405, 501})

Buckets = dict[float, float]


@dataclass(frozen=True)
class LatencySnapshot:
    ttft_p95_ms: float | None
    tpot_p95_ms: float | None
    running: int = 0
    waiting: int = 0


class MetricsSource(Protocol):
    """Where the task-executor-manager reads a model's latency percentiles from."""

    async def fetch(self, record: ModelRecord) -> LatencySnapshot | None:
        """The model's latest percentiles, or None when they cannot be read."""
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


def parse_histograms(
    families: Iterable[Metric], model_name: str, names: Iterable[str]
) -> dict[str, Buckets]:
    wanted = set(names)
    found: dict[str, Buckets] = {}
    for family in families:
        if family.name not in wanted:
            continue
        for sample in family.samples:
            if (
                sample.name.endswith("_bucket")
                and sample.labels.get("model_name") == model_name
                and "le" in sample.labels
            ):
                buckets = found.setdefault(family.name, {})
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return found


def parse_gauges(
    families: Iterable[Metric], model_name: str, names: Iterable[str]
) -> dict[str, float]:
    wanted = set(names)
    values: dict[str, float] = {}
    for family in families:
        if family.name in wanted:
            for sample in family.samples:
                if sample.labels.get("model_name") == model_name:
                    values[family.name] = values.get(family.name, 0.0) + sample.value
    return values


def _delta(current: Buckets, previous: Buckets | None) -> Buckets:
    if previous is None or any(current.get(b, 0.0) < c for b, c in previous.items()):
        return dict(current)  # first scrape, or the engine restarted and its counters reset
    return {b: c - previous.get(b, 0.0) for b, c in current.items()}


class EngineScrapeSource:
    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S)
        self._previous: dict[tuple[str, str], dict[str, Buckets]] = {}
        # Instances whose engine has no /metrics route: not asked again.
        self._without_metrics: set[tuple[str, str]] = set()

    async def close(self) -> None:
        await self._client.aclose()

    def _forget_gone(self, record: ModelRecord) -> None:
        """Drop what is kept about this model's instances that are no longer among its endpoints."""
        live = {(record.id, e.instance_id) for e in record.endpoints}
        self._without_metrics = {k for k in self._without_metrics if k[0] != record.id or k in live}
        for key in [k for k in self._previous if k[0] == record.id and k not in live]:
            del self._previous[key]

    async def fetch(self, record: ModelRecord) -> LatencySnapshot | None:
        windows: dict[str, Buckets] = {}
        gauges: dict[str, float] = {}
        scraped = 0
        self._forget_gone(record)
        for endpoint in record.endpoints:
            key = (record.id, endpoint.instance_id)
            if key in self._without_metrics:
                continue
            try:
                response = await self._client.get(f"{endpoint.url}/metrics")
                if response.status_code in NO_METRICS_STATUSES:
                    self._without_metrics.add(key)
                    logger.info("engine serves no /metrics (HTTP %d), not scraping it: model=%s "
                                "instance=%s url=%s", response.status_code, record.name,
                                endpoint.instance_id, endpoint.url)  # fmt: skip
                    continue
                response.raise_for_status()
            except httpx.HTTPError as exc:
                logger.warning("metrics scrape failed model=%s url=%s: %s", record.name,
                               endpoint.url, exc)  # fmt: skip
                continue
            scraped += 1
            families = list(text_string_to_metric_families(response.text))
            current = parse_histograms(families, record.name, (TTFT_METRIC, *TPOT_METRICS))
            previous = self._previous.get(key, {})
            self._previous[key] = current
            for name, buckets in current.items():
                merged = windows.setdefault(name, {})
                for bound, count in _delta(buckets, previous.get(name)).items():
                    merged[bound] = merged.get(bound, 0.0) + count
            for name, value in parse_gauges(
                families, record.name, (WAITING_METRIC, RUNNING_METRIC)
            ).items():
                gauges[name] = gauges.get(name, 0.0) + value
        if scraped == 0:
            return None
        tpot_buckets = next((windows[n] for n in TPOT_METRICS if n in windows), {})
        ttft = histogram_quantile(0.95, windows.get(TTFT_METRIC, {}))
        tpot = histogram_quantile(0.95, tpot_buckets)
        return LatencySnapshot(
            ttft_p95_ms=None if ttft is None else ttft * 1000,
            tpot_p95_ms=None if tpot is None else tpot * 1000,
            running=int(gauges.get(RUNNING_METRIC, 0)),
            waiting=int(gauges.get(WAITING_METRIC, 0)),
        )
