"""aif's own Prometheus series, measured at the gateway, where users feel latency.

Per model (label ``model``): time to first token, inter-token latency, time per output token
(per request, as a client measures it: ``(e2e - TTFT) / (output tokens - 1)``) and e2e
latency histograms, with vLLM's bucket boundaries (and finer ones where SLO targets sit)
under an ``aif_`` prefix; requests by status code; requests in flight and queued; requests
rejected, by reason, and those refused by a saturated model, by the priority class they
waited in. Per instance: in flight, and ejections. Control plane: models by status,
instances desired and ready. The scaler reads these (through Prometheus, or from this
registry in-process).

Gauges are read from the routing table at scrape time, so the request path pays nothing for
them; inter-token gaps are counted per chunk into plain bucket counters (a bisect and an add)
and exposed by a collector, since a locked ``Histogram.observe`` per chunk is the single most
expensive thing the relay loop would do.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from api.chat_job_executor.routing import Route
from domain.latency import GATEWAY_TOKEN_LATENCY_BUCKETS_S as TOKEN_LATENCY_BUCKETS_S
from domain.latency import GATEWAY_TTFT_BUCKETS_S as TTFT_BUCKETS_S
from domain.latency import REQUEST_LATENCY_BUCKETS_S
from domain.records import ModelStatus


class GapCounts:
    """One model's inter-token gaps as bucket counts: cheap enough for every chunk."""

    __slots__ = ("counts", "total_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(TOKEN_LATENCY_BUCKETS_S) + 1)
        self.total_s = 0.0

    def add(self, gap_s: float) -> None:
        self.counts[bisect.bisect_left(TOKEN_LATENCY_BUCKETS_S, gap_s)] += 1
        self.total_s += gap_s


class GatewayMetrics:
    """The gateway's series in ``registry``; ``routes`` gives the table at scrape time."""

    def __init__(self, registry: CollectorRegistry, routes: Callable[[], Iterable[Route]]) -> None:
        self.ttft = Histogram(
            "aif_time_to_first_token_seconds",
            "Time from a request's arrival to its first streamed byte, at the gateway.",
            ["model"],
            buckets=TTFT_BUCKETS_S,
            registry=registry,
        )
        self.tpot = Histogram(
            "aif_request_time_per_output_token_seconds",
            "Per request: (e2e - TTFT) / (output tokens - 1), as the client sees it.",
            ["model"],
            buckets=TOKEN_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.e2e = Histogram(
            "aif_e2e_request_latency_seconds",
            "Time from a request's arrival to its last byte, at the gateway.",
            ["model"],
            buckets=REQUEST_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.requests = Counter(
            "aif_requests", "Inference requests answered, by status code.", ["model", "code"],
            registry=registry,
        )  # fmt: skip
        self.rejected = Counter(
            "aif_requests_rejected",
            "Requests refused before reaching an instance, by reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.overloaded = Counter(
            "aif_requests_overloaded",
            "Requests refused for a saturated model (queue full, pushed out, or waited too "
            "long), by the priority class they waited in.",
            ["model", "priority"],
            registry=registry,
        )
        self.ejections = Counter(
            "aif_instance_ejections",
            "Times an instance left routing after repeated failures.",
            ["model", "instance"],
            registry=registry,
        )
        self.gaps: defaultdict[str, GapCounts] = defaultdict(GapCounts)
        registry.register(_TableCollector(routes, self.gaps))


class _TableCollector(Collector):
    """Gauges from the routing table, and the inter-token histogram from its counts."""

    def __init__(
        self, routes: Callable[[], Iterable[Route]], gaps: defaultdict[str, GapCounts]
    ) -> None:
        self._routes = routes
        self._gaps = gaps

    def collect(self) -> Iterator[Metric]:
        routes = list(self._routes())
        yield from _model_gauges(routes)
        yield from _instance_gauges(routes)
        yield self._inter_token()

    def _inter_token(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "aif_inter_token_latency_seconds",
            "Gaps between streamed chunks of an answer, at the gateway.",
            labels=["model"],
        )
        for model, gaps in list(self._gaps.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*TOKEN_LATENCY_BUCKETS_S, float("inf")), gaps.counts, strict=True
            ):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            family.add_metric([model], buckets, gaps.total_s)
        return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _model_gauges(routes: list[Route]) -> Iterator[Metric]:
    in_flight = GaugeMetricFamily(
        "aif_requests_in_flight", "Requests being served, per model.", labels=["model"]
    )
    queued = GaugeMetricFamily(
        "aif_requests_queued", "Requests waiting for a slot, per model.", labels=["model"]
    )
    desired = GaugeMetricFamily(
        "aif_instances_desired", "Instances the model should have.", labels=["model"]
    )
    ready = GaugeMetricFamily(
        "aif_instances_ready", "Instances ready and routed to.", labels=["model"]
    )
    capacity = GaugeMetricFamily(
        "aif_capacity_requests", "Requests the ready instances serve at once.", labels=["model"]
    )
    by_status = GaugeMetricFamily("aif_models", "Models, by status.", labels=["status"])
    counts = dict.fromkeys(ModelStatus, 0)
    for route in routes:
        in_flight.add_metric([route.name], route.gate.in_flight)
        queued.add_metric([route.name], route.gate.queued)
        desired.add_metric([route.name], route.desired_instances)
        ready.add_metric([route.name], len(route.instances))
        capacity.add_metric([route.name], route.capacity)
        counts[route.status] += 1
    for status, count in counts.items():
        by_status.add_metric([status.value], count)
    yield from (in_flight, queued, desired, ready, capacity, by_status)


def _instance_gauges(routes: list[Route]) -> Iterator[Metric]:
    in_flight = GaugeMetricFamily(
        "aif_instance_requests_in_flight",
        "Requests in flight to one instance.",
        labels=["model", "instance"],
    )
    ejected = GaugeMetricFamily(
        "aif_instance_ejected",
        "1 while an instance is out of routing after repeated failures.",
        labels=["model", "instance"],
    )
    now = time.monotonic()
    for route in routes:
        for instance in route.instances:
            labels = [route.name, instance.instance_id]
            in_flight.add_metric(labels, instance.in_flight)
            ejected.add_metric(labels, 0.0 if instance.available(now) else 1.0)
    yield from (in_flight, ejected)
