"""Load from the gateway's own series, windowed as PromQL would, with a fake clock."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from api.chat_job_executor.metrics import GatewayMetrics
from domain.records import ModelRecord, Pvc, Slo
from scaler.gateway_source import Collect, GatewaySource
from scaler.metrics import LoadSnapshot, histogram_quantile
from tests.scaler.fake_gateway import FakeGateway


def _record(name: str = "m") -> ModelRecord:
    return ModelRecord(
        name=name, type="QwQ-32B", resource_type="huawei.com/ascend-1980",
        max_instance=4, min_instance=1, replicas=1,
        pvc=Pvc(name="release-models", path="Qwen/QwQ-32B"),
        slo=Slo(target_time_to_first_token_p95=1000, target_time_per_output_token_p95=20),
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# The gateway's buckets (finer than vLLM's where SLO targets sit).
TTFT_S = [0.05] * 60 + [0.3] * 40  # p95 in (0.25, 0.3]: 0.25 + 0.05 * (95 - 60) / 40
TTFT_P95_MS = 293.75
TPOT_S = [0.03] * 100  # p95 in (0.025, 0.03]: 0.025 + 0.005 * 95 / 100
TPOT_P95_MS = 29.75


async def test_percentiles_rate_and_gauges_over_the_window() -> None:
    gateway, clock = FakeGateway("m", "other"), Clock()
    source = GatewaySource(_collect_of(gateway), window_s=60, clock=clock)
    assert await source.fetch(_record()) is None  # one collection is no window yet
    gateway.serve("m", TTFT_S, TPOT_S)
    gateway.serve("other", [9.0] * 10, [])
    gateway.in_flight.labels(model="m").set(7)
    gateway.queued.labels(model="m").set(2)
    clock.now += 20
    snapshot = await source.fetch(_record())
    assert snapshot is not None
    assert snapshot.ttft_p95_ms == pytest.approx(TTFT_P95_MS)
    assert snapshot.tpot_p95_ms == pytest.approx(TPOT_P95_MS)
    assert snapshot.request_rate == pytest.approx(100 / 20)
    assert snapshot.answered_total == 100  # this model's, in all
    assert (snapshot.in_flight, snapshot.queued) == (7, 2)
    assert (snapshot.engine_waiting, snapshot.kv_usage) == (None, None)


async def test_old_observations_leave_the_window() -> None:
    gateway, clock = FakeGateway("m"), Clock()
    source = GatewaySource(_collect_of(gateway), window_s=60, clock=clock)
    await source.fetch(_record())
    gateway.serve("m", TTFT_S, TPOT_S)
    for _ in range(4):
        clock.now += 30
        await source.fetch(_record())
    # Idle: nothing new for 60 s; the count answered in all stays.
    assert await source.fetch(_record()) == LoadSnapshot(answered_total=100)


async def test_collections_are_shared_within_refresh_s() -> None:
    gateway, clock = FakeGateway("m"), Clock()
    calls: list[int] = []

    async def collect() -> Iterable[Metric]:
        calls.append(1)
        return list(gateway.registry.collect())

    source = GatewaySource(collect, refresh_s=5, clock=clock)
    await source.fetch(_record())
    await source.fetch(_record("other"))
    clock.now += 5
    await source.fetch(_record())
    assert len(calls) == 2


async def test_a_counter_reset_is_a_restart() -> None:
    """Counts going down: the gateway restarted; what it counted before still counts."""
    counts = iter([(100, 50), (120, 60), (10, 8)])  # (requests, TTFTs under 0.1 s), cumulative
    clock = Clock()

    async def collect() -> Iterable[Metric]:
        requests, fast = next(counts)
        counter = CounterMetricFamily("aif_requests", "", labels=["model", "code"])
        counter.add_metric(["m", "200"], requests)
        ttft = HistogramMetricFamily("aif_time_to_first_token_seconds", "", labels=["model"])
        ttft.add_metric(["m"], [("0.1", fast), ("1.0", requests), ("+Inf", requests)], 0.0)
        return [counter, ttft]

    source = GatewaySource(collect, window_s=60, clock=clock)
    for _ in range(3):
        snapshot = await source.fetch(_record())
        clock.now += 10
    # Over the window: 20 + 10 requests (not 10 - 100), of which 10 + 8 under 0.1 s.
    assert snapshot is not None
    assert snapshot.request_rate == pytest.approx(30 / 20)
    assert snapshot.answered_total == 120 + 10  # never lower than before the restart
    expected = histogram_quantile(0.95, {0.1: 18, 1.0: 30, float("inf"): 30})
    assert expected is not None and snapshot.ttft_p95_ms == pytest.approx(1000 * expected)


async def test_the_real_gateway_series_are_read_from_its_registry() -> None:
    registry, clock = CollectorRegistry(), Clock()
    metrics = GatewayMetrics(registry, routes=lambda: [])
    source = GatewaySource.from_registry(registry, clock=clock)
    await source.fetch(_record())
    for value in TTFT_S:
        metrics.ttft.labels(model="m").observe(value)
        metrics.requests.labels(model="m", code="200").inc()
    clock.now += 10
    snapshot = await source.fetch(_record())
    assert snapshot is not None and snapshot.ttft_p95_ms == pytest.approx(TTFT_P95_MS)
    assert snapshot.request_rate == pytest.approx(10)


async def test_a_failed_collection_holds_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> Iterable[Metric]:
        raise OSError("gateway gone")

    source = GatewaySource(broken, refresh_s=0)
    assert [await source.fetch(_record()) for _ in range(3)] == [None] * 3
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


@pytest.fixture
def gateways() -> Iterator[list[tuple[FakeGateway, str]]]:
    started: list[tuple[FakeGateway, str]] = []
    servers = []
    for _ in range(2):
        gateway = FakeGateway("m")
        server, thread = start_http_server(0, addr="127.0.0.1", registry=gateway.registry)
        servers.append((server, thread))
        started.append((gateway, f"http://127.0.0.1:{server.server_port}"))
    yield started
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_several_gateways_over_http_are_added_up(
    gateways: list[tuple[FakeGateway, str]], caplog: pytest.LogCaptureFixture
) -> None:
    (first, first_url), (second, second_url) = gateways
    clock = Clock()
    urls = [first_url, second_url, "http://127.0.0.1:9"]
    source = GatewaySource.from_urls(urls, httpx.AsyncClient(), clock=clock)
    try:
        await source.fetch(_record())
        first.serve("m", TTFT_S[:60], TPOT_S)
        second.serve("m", TTFT_S[60:], [])
        first.in_flight.labels(model="m").set(3)
        second.in_flight.labels(model="m").set(4)
        clock.now += 10
        snapshot = await source.fetch(_record())
    finally:
        await source.close()
    assert snapshot is not None
    assert snapshot.ttft_p95_ms == pytest.approx(TTFT_P95_MS)
    assert snapshot.request_rate == pytest.approx(10)
    assert snapshot.in_flight == 7
    # The gateway that never answers is logged once, not at every collection.
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


async def test_this_process_and_its_chat_workers_are_added_up(
    gateways: list[tuple[FakeGateway, str]],
) -> None:
    (worker, worker_url), _ = gateways
    local, clock = FakeGateway("m"), Clock()
    source = GatewaySource.from_registry(
        local.registry, clock=clock, peers=[worker_url], client=httpx.AsyncClient()
    )
    try:
        await source.fetch(_record())
        local.serve("m", TTFT_S[:60], TPOT_S)
        worker.serve("m", TTFT_S[60:], [])
        local.in_flight.labels(model="m").set(3)
        worker.in_flight.labels(model="m").set(4)
        clock.now += 10
        snapshot = await source.fetch(_record())
    finally:
        await source.close()
    assert snapshot is not None
    assert snapshot.ttft_p95_ms == pytest.approx(TTFT_P95_MS)
    assert snapshot.request_rate == pytest.approx(10)
    assert snapshot.in_flight == 7


def _collect_of(gateway: FakeGateway) -> Collect:
    async def collect() -> Iterable[Metric]:
        return list(gateway.registry.collect())

    return collect
