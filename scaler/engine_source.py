"""The engines' own ``/metrics``, scraped directly: the former default source.

Kept while the application still wires it; :class:`scaler.gateway_source.GatewaySource` and
:class:`scaler.prometheus_source.PrometheusSource` measure latency where users feel it, at the
gateway, and should replace it. Engines measure their own TTFT and inter-token latency, so
these percentiles leave out the gateway's queue and relay.

Every ready instance's ``/metrics`` (vLLM's names, which the simulator also serves) is read;
previous cumulative bucket counts are kept per instance, and p95 is computed over the interval
between two scrapes as PromQL's ``histogram_quantile(0.95, sum by (le) (rate(...)))`` does.
The request rate is the TTFT histogram's count over that interval. An instance that cannot be
reached is logged and left out. Some engines serve no ``/metrics`` at all (llama-cpp-python's
server answers 404): such an instance is noted once at INFO and not asked again for as long as
it lives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from domain.records import ModelRecord
from scaler.metrics import (
    ENGINE_KV_USAGE_GAUGE,
    ENGINE_RUNNING_GAUGE,
    ENGINE_WAITING_GAUGE,
    QUANTILE,
    LoadSnapshot,
    histogram_quantile,
    seconds_to_ms,
)

logger = logging.getLogger(__name__)

TTFT_METRIC = "vllm:time_to_first_token_seconds"
# vLLM renamed the inter-token histogram; older engines only serve the second name.
TPOT_METRICS = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
SCRAPE_TIMEOUT_S = 2.0
# Answers that mean "this engine has no metrics route", as opposed to a failing scrape.
NO_METRICS_STATUSES = frozenset({404, 405, 501})

Buckets = dict[float, float]


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
) -> dict[str, list[float]]:
    wanted = set(names)
    values: dict[str, list[float]] = {}
    for family in families:
        if family.name in wanted:
            for sample in family.samples:
                if sample.labels.get("model_name") == model_name:
                    values.setdefault(family.name, []).append(sample.value)
    return values


def _delta(current: Buckets, previous: Buckets | None) -> Buckets:
    if previous is None or any(current.get(b, 0.0) < c for b, c in previous.items()):
        return dict(current)  # first scrape, or the engine restarted and its counters reset
    return {b: c - previous.get(b, 0.0) for b, c in current.items()}


@dataclass
class _Window:
    """What the scrapes of one fetch add up to."""

    histograms: dict[str, Buckets] = field(default_factory=dict)
    gauges: dict[str, list[float]] = field(default_factory=dict)
    rate: float = 0.0
    scraped: int = 0

    def add(self, name: str, delta: Buckets) -> None:
        merged = self.histograms.setdefault(name, {})
        for bound, count in delta.items():
            merged[bound] = merged.get(bound, 0.0) + count


class EngineScrapeSource:
    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client or httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S)
        self._clock = clock
        self._previous: dict[tuple[str, str], tuple[float, dict[str, Buckets]]] = {}
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

    async def _scrape(self, record: ModelRecord, key: tuple[str, str], url: str) -> str | None:
        try:
            response = await self._client.get(f"{url}/metrics")
            if response.status_code in NO_METRICS_STATUSES:
                self._without_metrics.add(key)
                logger.info("engine serves no /metrics (HTTP %d), not scraping it: model=%s "
                            "instance=%s url=%s", response.status_code, record.name, key[1],
                            url)  # fmt: skip
                return None
            response.raise_for_status()
        except httpx.HTTPError as exc:
            logger.warning("metrics scrape failed model=%s url=%s: %s", record.name, url, exc)
            return None
        return response.text

    def _add(self, window: _Window, record: ModelRecord, key: tuple[str, str], text: str) -> None:
        families = list(text_string_to_metric_families(text))
        now = self._clock()
        current = parse_histograms(families, record.name, (TTFT_METRIC, *TPOT_METRICS))
        then, previous = self._previous.get(key, (now, {}))
        self._previous[key] = (now, current)
        for name, buckets in current.items():
            delta = _delta(buckets, previous.get(name))
            window.add(name, delta)
            if name == TTFT_METRIC and name in previous and now > then:
                window.rate += delta.get(float("inf"), 0.0) / (now - then)
        gauges = (ENGINE_WAITING_GAUGE, ENGINE_RUNNING_GAUGE, ENGINE_KV_USAGE_GAUGE)
        for name, values in parse_gauges(families, record.name, gauges).items():
            window.gauges.setdefault(name, []).extend(values)

    async def fetch(self, record: ModelRecord) -> LoadSnapshot | None:
        window = _Window()
        self._forget_gone(record)
        for endpoint in record.endpoints:
            key = (record.id, endpoint.instance_id)
            if key in self._without_metrics:
                continue
            text = await self._scrape(record, key, endpoint.url)
            if text is not None:
                window.scraped += 1
                self._add(window, record, key, text)
        if window.scraped == 0:
            return None
        tpot = next((window.histograms[n] for n in TPOT_METRICS if n in window.histograms), {})
        waiting = window.gauges.get(ENGINE_WAITING_GAUGE)
        kv = window.gauges.get(ENGINE_KV_USAGE_GAUGE)
        return LoadSnapshot(
            ttft_p95_ms=seconds_to_ms(
                histogram_quantile(QUANTILE, window.histograms.get(TTFT_METRIC, {}))
            ),
            tpot_p95_ms=seconds_to_ms(histogram_quantile(QUANTILE, tpot)),
            request_rate=window.rate,
            in_flight=sum(window.gauges.get(ENGINE_RUNNING_GAUGE, [])),
            engine_waiting=None if waiting is None else sum(waiting),
            kv_usage=None if not kv else sum(kv) / len(kv),
        )
