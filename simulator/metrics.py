"""Prometheus metrics of the simulated engine, named, labelled and bucketed as vLLM's.

Every series carries ``model_name=<served model name>``, so a scraper written for vLLM reads
the simulator unchanged. Metrics live in a :class:`prometheus_client.CollectorRegistry` of
their own (never the process-global one), so several engines can share a process in tests.
Load gauges (running, waiting, KV usage) are read from the scheduler at scrape time; request
and step metrics are recorded from :class:`~simulator.scheduler.StepOutcome` values.
Counters are named without ``_total``: prometheus_client appends it, as vLLM relies on.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from domain.latency import (
    REQUEST_LATENCY_BUCKETS_S,
    TOKEN_LATENCY_BUCKETS_S,
    TTFT_BUCKETS_S,
)
from simulator.scheduler import StepOutcome
from simulator.sequence import FinishedSequence

FINISH_REASONS = ("stop", "length", "abort")
# The classic text format: every Prometheus version and text parser reads it.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def buckets_1_2_5(max_value: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value``: vLLM's token-count buckets."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return tuple(buckets)
            buckets.append(float(value))
        exponent += 1


class LoadSource(Protocol):
    """What the load gauges read at scrape time (the scheduler)."""

    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def kv_cache_usage(self) -> float: ...


class _Series:
    """Makes this engine's series: one ``model_name`` label, one registry."""

    def __init__(self, model_name: str, registry: CollectorRegistry) -> None:
        self.model_name = model_name
        self.registry = registry

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        family = Histogram(name, doc, ["model_name"], buckets=buckets, registry=self.registry)
        return family.labels(self.model_name)

    def counter(self, name: str, doc: str) -> Counter:
        return Counter(name, doc, ["model_name"], registry=self.registry).labels(self.model_name)

    def gauge(self, name: str, doc: str) -> Gauge:
        return Gauge(name, doc, ["model_name"], registry=self.registry).labels(self.model_name)


class EngineMetrics:
    """The engine's Prometheus series, all labelled with one ``model_name``."""

    def __init__(
        self, model_name: str, max_model_len: int, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        series = _Series(model_name, self.registry)
        self._define_latency(series)
        self._define_tokens(series, buckets_1_2_5(max_model_len))
        self._define_load(series)
        request_success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        # Every reason exists from the start, as in vLLM, so rates never miss a series.
        self.request_success = {
            reason: request_success.labels(model_name, reason) for reason in FINISH_REASONS
        }

    def _define_latency(self, series: _Series) -> None:
        self.time_to_first_token = series.histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS_S,
        )
        self.inter_token_latency = series.histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            TOKEN_LATENCY_BUCKETS_S,
        )
        self.time_per_output_token = series.histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds. "
            "DEPRECATED: Use vllm:inter_token_latency_seconds instead.",
            TOKEN_LATENCY_BUCKETS_S,
        )
        self.request_time_per_output_token = series.histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            TOKEN_LATENCY_BUCKETS_S,
        )
        self.e2e_request_latency = series.histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self.request_queue_time = series.histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS_S,
        )

    def _define_tokens(self, series: _Series, token_buckets: tuple[float, ...]) -> None:
        self.request_prompt_tokens = series.histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = series.histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            token_buckets,
        )
        self.prompt_tokens = series.counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed."
        )
        self.generation_tokens = series.counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.num_preemptions = series.counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prefix_cache_queries = series.counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_cache_hits = series.counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self.gpu_prefix_cache_queries = series.counter(
            "vllm:gpu_prefix_cache_queries",
            "GPU prefix cache queries, in terms of number of queried tokens. "
            "DEPRECATED: Use vllm:prefix_cache_queries instead.",
        )
        self.gpu_prefix_cache_hits = series.counter(
            "vllm:gpu_prefix_cache_hits",
            "GPU prefix cache hits, in terms of number of cached tokens. "
            "DEPRECATED: Use vllm:prefix_cache_hits instead.",
        )

    def _define_load(self, series: _Series) -> None:
        self.num_requests_running = series.gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.num_requests_waiting = series.gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        self.kv_cache_usage = series.gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.gpu_cache_usage = series.gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage. "
            "DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
        )

    def bind_load(self, load: LoadSource) -> None:
        """Read the load gauges from ``load`` whenever the registry is scraped."""
        self.num_requests_running.set_function(lambda: load.num_running)
        self.num_requests_waiting.set_function(lambda: load.num_waiting)
        self.kv_cache_usage.set_function(lambda: load.kv_cache_usage)
        self.gpu_cache_usage.set_function(lambda: load.kv_cache_usage)

    def record_step(self, outcome: StepOutcome) -> None:
        plan = outcome.plan
        if plan.prefix_queried_tokens:
            for queries in (self.prefix_cache_queries, self.gpu_prefix_cache_queries):
                queries.inc(plan.prefix_queried_tokens)
            for hits in (self.prefix_cache_hits, self.gpu_prefix_cache_hits):
                hits.inc(plan.prefix_hit_tokens)
        if plan.preemptions:
            self.num_preemptions.inc(plan.preemptions)
        for queue_s in plan.queue_times_s:
            self.request_queue_time.observe(queue_s)
        if outcome.prompt_tokens:
            self.prompt_tokens.inc(outcome.prompt_tokens)
        if outcome.generation_tokens:
            self.generation_tokens.inc(outcome.generation_tokens)
        for ttft_s in outcome.time_to_first_token_s:
            self.time_to_first_token.observe(ttft_s)
        for itl_s in outcome.inter_token_latency_s:
            self.inter_token_latency.observe(itl_s)
            self.time_per_output_token.observe(itl_s)
        for finished in outcome.finished:
            self.record_finished(finished)

    def record_finished(self, finished: FinishedSequence) -> None:
        self.request_success[finished.finish_reason].inc()
        if finished.finish_reason == "abort":
            return  # an aborted request's latencies describe the client, not the engine
        self.e2e_request_latency.observe(finished.e2e_s)
        self.request_prompt_tokens.observe(finished.prompt_tokens)
        self.request_generation_tokens.observe(finished.generation_tokens)
        if finished.time_per_output_token_s is not None:
            self.request_time_per_output_token.observe(finished.time_per_output_token_s)

    def render(self) -> bytes:
        """The registry in Prometheus text format (served as :data:`METRICS_CONTENT_TYPE`)."""
        return generate_latest(self.registry)
