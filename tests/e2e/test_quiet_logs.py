"""An idle model writes nothing to the log at INFO: probes and routine calls are DEBUG."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import register_body, wait_until
from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow

IDLE_S = 12.0


def test_an_idle_model_with_three_instances_logs_no_info_lines(
    server_factory: type[Server], tmp_path: Path
) -> None:
    server = server_factory(
        data_dir=tmp_path / "data",
        engine_args=["--startup-delay-s", "0"],
        env={"AIF_LOG_LEVEL": "INFO", "AIF_SCALE_INTERVAL_S": "1"},
    )
    server.start()
    name = f"idle-{uuid.uuid4().hex[:8]}"
    body = register_body(name=name, min_instance=3, max_instance=3)
    assert httpx.post(f"{server.url}/v1/models", json=body).status_code == 201

    def active() -> bool:
        model = httpx.get(f"{server.url}/v1/models/{name}").json()["model"]
        return bool(model["status"] == "ACTIVE" and model["ready_instances"] == 3)

    wait_until(active)
    log = tmp_path / f"aif-{server.port}.log"
    time.sleep(1)  # the pass that saw it ACTIVE writes its line
    before = log.read_text().splitlines()
    time.sleep(IDLE_S)
    assert httpx.get(f"{server.url}/health").status_code == 200  # probes: DEBUG too
    idle = log.read_text().splitlines()[len(before) :]
    info = [line for line in idle if " INFO " in line or line.startswith("INFO")]
    print(f"{len(info)} INFO lines in {IDLE_S:g}s idle with 3 instances")
    assert info == [], "\n".join(info[:20])
