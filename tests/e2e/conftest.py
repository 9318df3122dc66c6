"""Runs ``aif serve`` (or one role, ``aif <role>``) for real, on a free port with a data dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port


def engine_processes(model_name: str) -> list[psutil.Process]:
    """Live engine processes serving ``model_name``, whoever their parent is."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if "simulator" in cmdline and model_name in cmdline:
            found.append(proc)
    return found


@dataclass
class Server:
    data_dir: Path
    engine_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    # ``serve`` runs every role; a role's name runs that role alone.
    command: str = "serve"
    env: dict[str, str] = field(default_factory=dict)
    # The scaling policy's idle window (no traffic this long: toward min_instance).
    idle_window_s: float | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "AIF_RECONCILE_INTERVAL_S": "0.1",
            "AIF_ROUTING_REFRESH_S": "0.1",
            "AIF_ENGINE_ARGS": json.dumps(self.engine_args),
            "AIF_LOG_LEVEL": "WARNING",
            **self.env,
        }
        if self.idle_window_s is not None:
            env["AIF_SCALE_IDLE_S"] = str(self.idle_window_s)
        log = (self.data_dir.parent / f"aif-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", self.command, "--port", str(self.port),
             "--data-dir", str(self.data_dir)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise AssertionError(f"aif {self.command} exited with {self.process.returncode}")
            time.sleep(0.05)
        raise AssertionError(f"aif {self.command} did not answer /health in time")

    def engines(self) -> list[psutil.Process]:
        """Engine processes this server started and that are still alive."""
        if self.process is None or self.process.poll() is not None:
            return []
        children = psutil.Process(self.process.pid).children(recursive=True)
        return [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[Server]]:
    started: list[Server] = []

    class _Server(Server):
        def start(self) -> None:
            started.append(self)
            super().start()

    yield _Server
    leftovers = [proc for server in started for proc in server.engines()]
    for server in started:
        server.kill(signal.SIGTERM)
    for proc in leftovers:
        if proc.is_running():
            proc.kill()


@pytest.fixture
def server(server_factory: type[Server], tmp_path: Path) -> Server:
    srv = server_factory(data_dir=tmp_path / "data", engine_args=["--startup-delay-s", "0.2"])
    srv.start()
    return srv
