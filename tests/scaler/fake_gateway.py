"""A gateway's ``aif_*`` series in a registry of their own, with the gateway's names and buckets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from domain.latency import GATEWAY_TOKEN_LATENCY_BUCKETS_S as TOKEN_LATENCY_BUCKETS_S
from domain.latency import GATEWAY_TTFT_BUCKETS_S as TTFT_BUCKETS_S


class FakeGateway:
    def __init__(self, *models: str) -> None:
        self.registry = CollectorRegistry()
        self.ttft = Histogram("aif_time_to_first_token_seconds", "TTFT", ["model"],
                              buckets=TTFT_BUCKETS_S, registry=self.registry)  # fmt: skip
        self.tpot = Histogram("aif_request_time_per_output_token_seconds", "TPOT", ["model"],
                              buckets=TOKEN_LATENCY_BUCKETS_S, registry=self.registry)  # fmt: skip
        self.requests = Counter("aif_requests", "Requests", ["model", "code"],
                                registry=self.registry)  # fmt: skip
        self.in_flight = Gauge("aif_requests_in_flight", "In flight", ["model"],
                               registry=self.registry)  # fmt: skip
        self.queued = Gauge("aif_requests_queued", "Queued", ["model"], registry=self.registry)
        for model in models:  # the series exist, at zero, before any request
            self.ttft.labels(model=model)
            self.tpot.labels(model=model)
            self.requests.labels(model=model, code="200")
            self.in_flight.labels(model=model).set(0)
            self.queued.labels(model=model).set(0)

    def serve(self, model: str, ttft_s: list[float], tpot_s: list[float]) -> None:
        """Requests answered: one per TTFT, streamed ones with a TPOT too."""
        for value in ttft_s:
            self.ttft.labels(model=model).observe(value)
            self.requests.labels(model=model, code="200").inc()
        for value in tpot_s:
            self.tpot.labels(model=model).observe(value)
