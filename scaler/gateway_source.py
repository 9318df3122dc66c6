"""Load read from the gateway's own metric families, for when no Prometheus is configured.

:class:`GatewaySource` is given an async callable returning ``prometheus_client`` metric
families: :meth:`GatewaySource.from_registry` collects an in-process registry (the embedded
default, where the scaler runs beside the gateway), :meth:`GatewaySource.from_urls` scrapes one
or more gateways' ``/metrics`` over HTTP and adds their series up (split roles).

The figures are PromQL's, computed here over ``window_s``:

- p95 TTFT and TPOT: ``histogram_quantile(0.95, sum by (le) (rate(<histogram>_bucket[W])))``,
  from the increase of each series' cumulative bucket counts over the window;
- the request rate: ``sum(rate(aif_requests_total[W]))``, and the count answered in all (its
  latest value);
- in flight, queued, and the engines' queue: the latest gauge values, summed; KV cache usage,
  their mean.

Each series keeps its samples (one per collection) over the window. A count that goes down
means the process restarted: as PromQL does, the count before the reset is added to every
later sample, so the increase over the window stays right. A window needs two samples, so the
first collection returns None (hold) rather than an idle model; a series that appears later
was born since the previous collection and counts from zero (a model's histograms appear
with its first request). Collections are shared between models: at most one per
``refresh_s``. A failed collection returns None and is logged once per failure streak.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from domain.records import ModelRecord
from scaler.metrics import (
    ENGINE_KV_USAGE_GAUGE,
    ENGINE_WAITING_GAUGE,
    IN_FLIGHT_GAUGE,
    ITL_HISTOGRAM,
    QUANTILE,
    QUEUED_GAUGE,
    REQUESTS_COUNTER,
    TPOT_HISTOGRAM,
    TTFT_HISTOGRAM,
    LoadSnapshot,
    histogram_quantile,
    seconds_to_ms,
)

logger = logging.getLogger(__name__)

Collect = Callable[[], Awaitable[Iterable[Metric]]]
Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]

HISTOGRAMS = (TTFT_HISTOGRAM, TPOT_HISTOGRAM, ITL_HISTOGRAM)
GAUGES = (IN_FLIGHT_GAUGE, QUEUED_GAUGE, ENGINE_WAITING_GAUGE, ENGINE_KV_USAGE_GAUGE)
COUNTER_KEY = float("inf")  # a counter is kept as a histogram with its one bucket
SOURCE_LABEL = "aif_gateway"  # from_urls: which gateway a series came from
SCRAPE_TIMEOUT_S = 2.0


def model_label(name: str) -> str:
    """The label naming the model: the gateway's ``model``, the engines' ``model_name``."""
    return "model_name" if name.startswith("vllm:") else "model"


@dataclass
class _Series:
    """One cumulative series' samples over the window, corrected for resets."""

    samples: deque[tuple[float, dict[float, float]]] = field(default_factory=deque)
    last_raw: dict[float, float] = field(default_factory=dict)
    offset: dict[float, float] = field(default_factory=dict)

    def add(self, now: float, raw: dict[float, float], window_s: float) -> None:
        if any(raw.get(bound, 0.0) < count for bound, count in self.last_raw.items()):
            for bound, count in self.last_raw.items():  # a restart: carry what was counted
                self.offset[bound] = self.offset.get(bound, 0.0) + count
        self.last_raw = raw
        self.samples.append((now, {b: c + self.offset.get(b, 0.0) for b, c in raw.items()}))
        # Keep the newest sample at or before the window's start as the base.
        while len(self.samples) > 2 and self.samples[1][0] <= now - window_s:
            self.samples.popleft()

    def increase(self) -> tuple[float, dict[float, float]] | None:
        """(seconds, increase per bucket) between the oldest and newest kept samples."""
        if len(self.samples) < 2:
            return None
        (start, first), (end, last) = self.samples[0], self.samples[-1]
        return end - start, {b: c - first.get(b, 0.0) for b, c in last.items()}

    @property
    def seen_at(self) -> float:
        return self.samples[-1][0]


@dataclass
class _Collected:
    """One collection: cumulative series by (metric, labels), and gauges."""

    cumulative: dict[SeriesKey, dict[float, float]] = field(default_factory=dict)
    gauges: dict[SeriesKey, float] = field(default_factory=dict)

    def add(self, sample_name: str, labels: dict[str, str], value: float) -> None:
        for histogram in HISTOGRAMS:
            if sample_name == f"{histogram}_bucket" and "le" in labels:
                rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                self.cumulative.setdefault((histogram, rest), {})[float(labels["le"])] = value
                return
        key = (sample_name, tuple(sorted(labels.items())))
        if sample_name == REQUESTS_COUNTER:
            self.cumulative[key] = {COUNTER_KEY: value}
        elif sample_name in GAUGES:
            self.gauges[key] = value


def _matches(key: SeriesKey, metric: str, model: str) -> bool:
    return key[0] == metric and (model_label(metric), model) in key[1]


class GatewaySource:
    """PromQL's figures from metric families, windowed here; see the module's docstring."""

    def __init__(
        self,
        collect: Collect,
        *,
        window_s: float = 60.0,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._collect = collect
        self._window_s = window_s
        self._refresh_s = refresh_s
        self._clock = clock
        self._on_close = on_close
        self._series: dict[SeriesKey, _Series] = {}
        self._gauges: dict[SeriesKey, float] = {}
        self._collections = 0
        self._collected_at: float | None = None
        self._failing = False

    @classmethod
    def from_registry(
        cls,
        registry: CollectorRegistry,
        *,
        window_s: float = 60.0,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        peers: list[str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> GatewaySource:
        """In process: the gateway's registry, collected on this thread; with ``peers``, the
        ``/metrics`` of the other processes serving the same port (chat workers) added, read
        with ``client``, which ``close`` closes. No peer answering holds the fetch: this
        process's share alone would read as too little traffic."""
        scrape = _scraper(peers, client) if peers and client is not None else None

        async def collect() -> Iterable[Metric]:
            families = list(registry.collect())
            if scrape is not None:
                families += await scrape()
            return families

        on_close = client.aclose if client is not None else None
        return cls(collect, window_s=window_s, refresh_s=refresh_s, clock=clock, on_close=on_close)

    @classmethod
    def from_urls(
        cls,
        urls: list[str],
        client: httpx.AsyncClient,
        *,
        window_s: float = 60.0,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> GatewaySource:
        """Over HTTP: every gateway's ``/metrics``, added up. ``close`` closes ``client``.

        A gateway that does not answer is left out (logged once until it answers again);
        when none answers, the fetch holds.
        """
        return cls(
            _scraper(urls, client),
            window_s=window_s,
            refresh_s=refresh_s,
            clock=clock,
            on_close=client.aclose,
        )

    async def close(self) -> None:
        if self._on_close is not None:
            await self._on_close()

    async def fetch(self, record: ModelRecord) -> LoadSnapshot | None:
        if not await self._refresh():
            return None
        return self._snapshot(record.name)

    async def _refresh(self) -> bool:
        """Collect unless done within ``refresh_s``; False when no window can be read."""
        now = self._clock()
        if self._collected_at is not None and now - self._collected_at < self._refresh_s:
            return self._collections >= 2
        try:
            families = await self._collect()
            collected = _Collected()
            for family in families:
                for sample in family.samples:
                    collected.add(sample.name, sample.labels, sample.value)
        except Exception as exc:
            if not self._failing:
                logger.warning("gateway metrics could not be read (holding): %s", exc)
            self._failing = True
            return False
        if self._failing:
            logger.info("gateway metrics readable again")
        self._failing = False
        self._store(now, collected)
        return self._collections >= 2

    def _store(self, now: float, collected: _Collected) -> None:
        for key, raw in collected.cumulative.items():
            if key not in self._series:
                self._series[key] = _Series()
                if self._collected_at is not None:  # born since the last collection: from 0
                    self._series[key].add(self._collected_at, dict.fromkeys(raw, 0.0), 0.0)
            self._series[key].add(now, raw, self._window_s)
        horizon = now - 2 * self._window_s
        self._series = {k: s for k, s in self._series.items() if s.seen_at >= horizon}
        self._gauges = collected.gauges
        self._collected_at = now
        self._collections += 1

    def _increases(self, metric: str, model: str) -> list[tuple[float, dict[float, float]]]:
        found = []
        for key, series in self._series.items():
            if _matches(key, metric, model) and (increase := series.increase()) is not None:
                found.append(increase)
        return found

    def _quantile_ms(self, metric: str, model: str) -> float | None:
        buckets: dict[float, float] = {}
        for _, increase in self._increases(metric, model):
            for bound, count in increase.items():
                buckets[bound] = buckets.get(bound, 0.0) + count
        return seconds_to_ms(histogram_quantile(QUANTILE, buckets))

    def _gauge(self, metric: str, model: str) -> list[float]:
        return [v for k, v in self._gauges.items() if _matches(k, metric, model)]

    def _snapshot(self, model: str) -> LoadSnapshot:
        rate = sum(
            increase[COUNTER_KEY] / seconds
            for seconds, increase in self._increases(REQUESTS_COUNTER, model)
            if seconds > 0
        )
        counters = [
            s.samples[-1][1][COUNTER_KEY]
            for k, s in self._series.items()
            if _matches(k, REQUESTS_COUNTER, model)
        ]
        gaps = [
            increase[COUNTER_KEY] / seconds
            for seconds, increase in self._increases(ITL_HISTOGRAM, model)
            if seconds > 0 and COUNTER_KEY in increase
        ]
        waiting = self._gauge(ENGINE_WAITING_GAUGE, model)
        kv = self._gauge(ENGINE_KV_USAGE_GAUGE, model)
        return LoadSnapshot(
            ttft_p95_ms=self._quantile_ms(TTFT_HISTOGRAM, model),
            tpot_p95_ms=self._quantile_ms(TPOT_HISTOGRAM, model),
            request_rate=rate,
            answered_total=sum(counters) if counters else None,
            in_flight=sum(self._gauge(IN_FLIGHT_GAUGE, model)),
            queued=sum(self._gauge(QUEUED_GAUGE, model)),
            engine_waiting=sum(waiting) if waiting else None,
            kv_usage=sum(kv) / len(kv) if kv else None,
            tokens_per_s=sum(gaps) if gaps else None,
        )


def _scraper(urls: list[str], client: httpx.AsyncClient) -> Callable[[], Awaitable[list[Metric]]]:
    """Collects ``urls``' families: one that does not answer is left out (logged once until it
    answers again); when none answers, RuntimeError."""
    failing: set[str] = set()

    async def collect() -> list[Metric]:
        families, errors = await scrape_gateways(client, urls)
        for url in set(errors) - failing:
            logger.warning("gateway metrics could not be read url=%s: %s", url, errors[url])
        for url in failing - set(errors):
            logger.info("gateway metrics readable again url=%s", url)
        failing.clear()
        failing.update(errors)
        if len(errors) == len(urls):
            raise RuntimeError("no gateway answered")
        return families

    return collect


async def scrape_gateways(
    client: httpx.AsyncClient, urls: list[str]
) -> tuple[list[Metric], dict[str, str]]:
    """Every answering gateway's families, each sample labelled with its gateway; the errors."""

    async def one(url: str) -> list[Metric]:
        response = await client.get(f"{url.rstrip('/')}/metrics", timeout=SCRAPE_TIMEOUT_S)
        response.raise_for_status()
        families = list(text_string_to_metric_families(response.text))
        for family in families:
            family.samples = [
                s._replace(labels={**s.labels, SOURCE_LABEL: url}) for s in family.samples
            ]
        return families

    results = await asyncio.gather(*(one(url) for url in urls), return_exceptions=True)
    families: list[Metric] = []
    errors: dict[str, str] = {}
    for url, result in zip(urls, results, strict=True):
        if isinstance(result, Exception):
            errors[url] = repr(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            families.extend(result)
    return families, errors
