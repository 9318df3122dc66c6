"""The engines' scrape source against real HTTP servers on loopback, with and without /metrics."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from domain.records import Endpoint, ModelRecord, Pvc, Slo
from scaler.engine_source import EngineScrapeSource

VLLM_METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 1.0
"""


class Engine(ThreadingHTTPServer):
    """An engine's HTTP face: serves ``metrics`` on /metrics, or 404 when it is None."""

    def __init__(self, metrics: str | None) -> None:
        self.metrics = metrics
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Engine

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.path == "/metrics" and self.server.metrics is not None:
            body, status = self.server.metrics.encode(), 200
        else:
            body, status = b'{"detail":"Not Found"}', 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.shutdown()
        engine.server_close()


def _start(engines: list[Engine], metrics: str | None) -> Engine:
    engine = Engine(metrics)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    engines.append(engine)
    return engine


def _record(*urls: str) -> ModelRecord:
    return ModelRecord(
        name="m", type="QwQ-32B", resource_type="huawei.com/ascend-1980",
        max_instance=4, min_instance=1, replicas=len(urls),
        pvc=Pvc(name="release-models", path="Qwen/QwQ-32B"),
        slo=Slo(target_time_to_first_token_p95=1000, target_time_per_output_token_p95=20),
        endpoints=[Endpoint(instance_id=f"i{n}", url=url) for n, url in enumerate(urls)],
    )  # fmt: skip


async def test_engine_without_metrics_is_asked_once_and_logged_once(
    engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    engine = _start(engines, metrics=None)
    record = _record(engine.url)
    source = EngineScrapeSource()
    caplog.set_level(logging.DEBUG, logger="scaler.engine_source")
    try:
        snapshots = [await source.fetch(record) for _ in range(5)]
    finally:
        await source.close()
    assert snapshots == [None] * 5  # nothing to read: no traffic, the scaler holds
    assert engine.requests == ["/metrics"]
    lines = [r for r in caplog.records if r.name == "scaler.engine_source"]
    assert len(lines) == 1 and lines[0].levelno <= logging.INFO
    assert "no /metrics" in lines[0].getMessage()


async def test_a_replaced_instance_is_asked_again(engines: list[Engine]) -> None:
    engine = _start(engines, metrics=None)
    source = EngineScrapeSource()
    record = _record(engine.url)
    try:
        await source.fetch(record)
        await source.fetch(record)
        record.endpoints = [Endpoint(instance_id="new", url=engine.url)]
        await source.fetch(record)
    finally:
        await source.close()
    assert engine.requests == ["/metrics", "/metrics"]


async def test_engines_with_metrics_still_count_beside_one_without(
    engines: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    without = _start(engines, metrics=None)
    with_metrics = _start(engines, metrics=VLLM_METRICS)
    record = _record(without.url, with_metrics.url)
    source = EngineScrapeSource()
    try:
        snapshots = [await source.fetch(record) for _ in range(3)]
    finally:
        await source.close()
    assert without.requests == ["/metrics"]
    assert with_metrics.requests == ["/metrics"] * 3
    assert all(s is not None and (s.in_flight, s.engine_waiting) == (2, 1) for s in snapshots)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_an_unreachable_engine_is_still_retried(engines: list[Engine]) -> None:
    engine = _start(engines, metrics=VLLM_METRICS)
    url = engine.url
    engine.shutdown()
    engine.server_close()
    engines.clear()
    record = _record(url)
    source = EngineScrapeSource()
    try:
        assert await source.fetch(record) is None
        revived = _start(engines, metrics=VLLM_METRICS)
        record.endpoints = [Endpoint(instance_id="i0", url=revived.url)]
        assert await source.fetch(record) is not None
    finally:
        await source.close()
