from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.store.sqlite import SqliteModelStore
from domain.settings import Settings
from tests.fakes import FakeDeployer


def register_body(**overrides: Any) -> dict[str, Any]:
    """The product walkthrough's register body."""
    body: dict[str, Any] = {
        "name": "DeepSeek-R1-Distill-Qwen-7B",
        "type": "DeepSeek-R1-Distill-Qwen-7B",
        "resource_type": "huawei.com/ascend-1980",
        "version": "1.0.0",
        "max_instance": 4,
        "min_instance": 2,
        "pvc": {"name": "release-models", "path": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"},
        "slo": {"target_time_to_first_token_p95": 1000, "target_time_per_output_token_p95": 20},
        "description": "This is model description.",
    }
    body.update(overrides)
    return body


def free_port() -> int:
    """A port nothing on this machine listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], Any], timeout_s: float = 20.0, step_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(step_s)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        reconcile_interval_s=0.05,
        routing_refresh_s=0.05,
        backoff_base_s=0.05,
        backoff_max_s=0.1,
        max_attempts=3,
        max_instance_cap=8,
    )


@pytest.fixture
def deployer() -> FakeDeployer:
    return FakeDeployer()


@pytest.fixture
def store(settings: Settings) -> Iterator[SqliteModelStore]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    s = SqliteModelStore(settings.data_dir / "aif.db")
    yield s
    s.close()


@pytest.fixture
def client(
    settings: Settings, store: SqliteModelStore, deployer: FakeDeployer
) -> Iterator[TestClient]:
    app = create_app(settings, store=store, deployer_factory=lambda _: deployer)
    with TestClient(app) as c:
        yield c


@dataclass
class RedisServer:
    """A redis-server on a free port, with no persistence; :meth:`kill` and :meth:`start`
    again on the same port stand for Redis going away and coming back."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def answers() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(answers, timeout_s=10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server (skipped where none is installed; CI installs Debian's)."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()
