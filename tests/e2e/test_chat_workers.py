"""``AIF_CHAT_WORKERS``: more processes serving one port, with metrics read from all of them,
and no worker left behind when the command's process stops or is killed."""

from __future__ import annotations

import re
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import register_body, wait_until
from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow

FIXED_PACE = ["--startup-delay-s", "0", "--fixed-ttft-ms", "20", "--fixed-itl-ms", "5"]


def _workers(server: Server) -> list[psutil.Process]:
    assert server.process is not None
    return [
        child
        for child in psutil.Process(server.process.pid).children()
        if "chat-worker" in child.cmdline()
    ]


def _start(server_factory: type[Server], tmp_path: Path, workers: int) -> Server:
    server = server_factory(
        data_dir=tmp_path / "data", engine_args=FIXED_PACE, env={"AIF_CHAT_WORKERS": str(workers)}
    )
    server.start()
    wait_until(lambda: len(_workers(server)) == workers - 1)
    return server


def _chat(url: str, name: str) -> int:
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    # A connection of its own each time: any process may accept it.
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as answer:
        text = answer.read().decode()
    assert '"completion_tokens":4' in text.replace(" ", ""), text
    return answer.status_code


def test_workers_share_the_port_and_each_reports_its_own_metrics(
    server_factory: type[Server], tmp_path: Path
) -> None:
    server = _start(server_factory, tmp_path, workers=3)
    name = f"w-{uuid.uuid4().hex[:8]}"
    body = register_body(name=name, min_instance=1, max_instance=1)
    registered = httpx.post(f"{server.url}/v1/models", json=body, timeout=10)
    assert registered.status_code == 201, registered.text
    model_id = registered.json()["model"]["id"]
    wait_until(
        lambda: (
            httpx.get(f"{server.url}/v1/models/{model_id}", timeout=5).json()["model"]["status"]
            == "ACTIVE"
        )
    )
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _chat(server.url, name), range(40)))
    assert codes == [200] * 40

    groups = httpx.get(f"{server.url}/discovery/prometheus", timeout=5).json()
    [gateways] = [g["targets"] for g in groups if g["labels"].get("aif_role") == "gateway"]
    assert len(gateways) == 3 and str(server.port) not in " ".join(gateways)
    pattern = re.compile(rf'aif_requests_total{{code="200",model="{name}"}} (\S+)')
    served = []
    for target in gateways:
        found = pattern.search(httpx.get(f"http://{target}/metrics", timeout=5).text)
        served.append(float(found.group(1)) if found else 0.0)
    assert sum(served) == 40  # every request counted once, by the process that served it
    assert sum(1 for n in served if n) >= 2  # the port is shared, not one process's


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_worker_outlives_the_command(
    server_factory: type[Server], tmp_path: Path, sig: signal.Signals
) -> None:
    server = _start(server_factory, tmp_path, workers=3)
    workers = _workers(server)
    server.kill(sig)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [] and len(gone) == 2


def test_a_dead_worker_leaves_the_port_to_the_others(
    server_factory: type[Server], tmp_path: Path
) -> None:
    server = _start(server_factory, tmp_path, workers=3)
    victim = _workers(server)[0]
    victim.kill()
    victim.wait(timeout=10)
    # New connections (one each) all reach a live process: the dead one's socket is gone.
    for _ in range(30):
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    log = tmp_path / f"aif-{server.port}.log"
    wait_until(lambda: "chat worker exited" in log.read_text())
    assert server.process is not None and server.process.poll() is None
