"""PrometheusSource against a real Prometheus, which finds a gateway and two engines through
http_sd (served from :func:`scaler.discovery.http_sd_groups`) and scrapes them every second."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from domain.records import Endpoint, ModelRecord, Pvc, Slo
from scaler.discovery import TargetGroup, http_sd_groups
from scaler.metrics import LoadSnapshot
from scaler.prometheus_source import PrometheusSource, promql_string
from tests.scaler.fake_gateway import FakeGateway

ODD_NAME = 'we"ird\\name'
# The gateway's buckets: p95 in (0.25, 0.3]: 0.25 + 0.05 * (95 - 60) / 40 = 293.75 ms
TTFT_S = [0.05] * 60 + [0.3] * 40
TPOT_S = [0.03] * 100  # p95 in (0.025, 0.03]: 0.025 + 0.005 * 95 / 100 = 29.75 ms
WINDOW_S = 30


def _record(name: str, *urls: str) -> ModelRecord:
    return ModelRecord(
        name=name, type="QwQ-32B", resource_type="huawei.com/ascend-1980",
        max_instance=4, min_instance=1, replicas=max(len(urls), 1),
        pvc=Pvc(name="release-models", path="Qwen/QwQ-32B"),
        slo=Slo(target_time_to_first_token_p95=1000, target_time_per_output_token_p95=20),
        endpoints=[Endpoint(instance_id=f"i{n}", url=url) for n, url in enumerate(urls)],
    )  # fmt: skip


def _engine(waiting: float, kv: float) -> CollectorRegistry:
    """An engine's vLLM gauges, under the name the engine serves (not aif's model name)."""
    registry = CollectorRegistry()
    labels = {"model_name": "/models/Qwen/QwQ-32B"}
    Gauge("vllm:num_requests_waiting", "", list(labels), registry=registry).labels(**labels).set(
        waiting
    )
    Gauge("vllm:kv_cache_usage_perc", "", list(labels), registry=registry).labels(**labels).set(kv)
    return registry


class Discovery(ThreadingHTTPServer):
    def __init__(self, groups: list[TargetGroup]) -> None:
        self.body = json.dumps(groups).encode()
        super().__init__(("127.0.0.1", 0), _SdHandler)


class _SdHandler(BaseHTTPRequestHandler):
    server: Discovery

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _query(url: str, promql: str) -> list[dict[str, object]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=2)
    response.raise_for_status()
    return response.json()["data"]["result"]  # type: ignore[no-any-return]


def _wait_for(url: str, promql: str, expected: float, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = _query(url, promql)
            if result and float(result[0]["value"][1]) == expected:  # type: ignore[index]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{promql} never became {expected}")


class World:
    def __init__(self, url: str, gateway: FakeGateway) -> None:
        self.url, self.gateway = url, gateway


@contextlib.contextmanager
def _prometheus(tmp: Path, sd_url: str) -> Iterator[str]:
    """A Prometheus scraping what ``sd_url`` lists every second; its URL."""
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "aif",
                            "http_sd_configs": [{"url": sd_url, "refresh_interval": "1s"}]}],
    }))  # fmt: skip
    port = _free_port()
    with (tmp / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if shutil.which("prometheus") is None:
        pytest.skip("needs prometheus")
    gateway = FakeGateway("m", "idle")
    gateway.in_flight.labels(model=ODD_NAME).set(2)
    servers = [start_http_server(0, addr="127.0.0.1", registry=gateway.registry)]
    servers += [start_http_server(0, addr="127.0.0.1", registry=_engine(w, kv))
                for w, kv in ((3, 0.5), (1, 0.3))]  # fmt: skip
    gateway_url, *engine_urls = (f"http://127.0.0.1:{s.server_port}" for s, _ in servers)
    discovery = Discovery(http_sd_groups([gateway_url], [_record("m", *engine_urls)]))
    threading.Thread(target=discovery.serve_forever, daemon=True).start()
    sd_url = f"http://127.0.0.1:{discovery.server_address[1]}/sd"
    try:
        with _prometheus(tmp_path_factory.mktemp("prometheus"), sd_url) as url:
            _wait_for(url, 'count(up{job="aif"} == 1)', 3)  # the gateway and both engines
            gateway.serve("m", TTFT_S, TPOT_S)
            gateway.in_flight.labels(model="m").set(7)
            gateway.queued.labels(model="m").set(2)
            _wait_for(url, 'sum(aif_requests_total{model="m"})', 100)
            _wait_for(url, 'sum(aif_requests_queued{model="m"})', 2)
            yield World(url, gateway)
    finally:
        discovery.shutdown()
        discovery.server_close()
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


async def test_percentiles_rate_and_gauges_from_prometheus(world: World) -> None:
    source = PrometheusSource(world.url, window_s=WINDOW_S)
    try:
        snapshot = await source.fetch(_record("m"))
    finally:
        await source.close()
    assert snapshot is not None
    assert snapshot.ttft_p95_ms == pytest.approx(293.75)
    assert snapshot.tpot_p95_ms == pytest.approx(29.75)
    # 100 requests, seen in the last few seconds of the window; rate() extrapolates a little.
    assert 100 / WINDOW_S <= snapshot.request_rate < 2 * 100 / WINDOW_S
    assert snapshot.answered_total == 100
    assert (snapshot.in_flight, snapshot.queued) == (7, 2)
    # The engines' gauges, found by the model's name that discovery gave their targets.
    assert snapshot.engine_waiting == 4
    assert snapshot.kv_usage == pytest.approx(0.4)


async def test_no_traffic_is_idle(world: World) -> None:
    source = PrometheusSource(world.url, window_s=WINDOW_S)
    try:
        idle = await source.fetch(_record("idle"))  # series at zero: NaN percentiles
        absent = await source.fetch(_record("absent"))  # no series at all
    finally:
        await source.close()
    assert idle == LoadSnapshot(answered_total=0) and absent == LoadSnapshot()


async def test_label_values_are_escaped(world: World) -> None:
    source = PrometheusSource(world.url, window_s=WINDOW_S)
    try:
        snapshot = await source.fetch(_record(ODD_NAME))
    finally:
        await source.close()
    assert snapshot is not None and snapshot.in_flight == 2


def test_promql_strings() -> None:
    assert promql_string('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


async def test_an_unreachable_prometheus_holds_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = PrometheusSource(f"http://127.0.0.1:{_free_port()}", timeout_s=1)
    try:
        assert [await source.fetch(_record("m")) for _ in range(3)] == [None] * 3
    finally:
        await source.close()
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
