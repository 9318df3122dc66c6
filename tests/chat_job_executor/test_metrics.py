"""aif's own /metrics, measured at the gateway, and the dashboard that plots them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chat_job_executor.conftest import model_record

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "aif-dashboard.json"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _scrape_after_traffic(engines: Any, gateway: Any) -> str:
    [engine] = await engines(1, tokens=5, token_delay_s=0.01)
    gw = await gateway()
    gw.store.create(model_record("m", [engine]))
    body = {"model": "m", "messages": [], "stream": True}
    async with httpx.AsyncClient() as client:
        async with client.stream("POST", gw.url + "/v1/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            await reply.aread()
        assert (await client.post(gw.url + "/v1/completions", json={"model": "m"})).is_success
        assert (await client.post(gw.url + "/v1/completions", json={"model": "x"})).status_code
        response = await client.get(gw.url + "/metrics")
    assert response.status_code == 200
    return response.text


async def test_latency_and_request_series_count_what_users_saw(engines: Any, gateway: Any) -> None:
    samples = _samples(await _scrape_after_traffic(engines, gateway))
    model = (("model", "m"),)
    assert samples[("aif_time_to_first_token_seconds_count", model)] == 1.0
    assert samples[("aif_e2e_request_latency_seconds_count", model)] == 2.0  # whole + streamed
    assert samples[("aif_request_time_per_output_token_seconds_count", model)] == 1.0
    # 5 tokens, a usage event and [DONE] come in chunks: at least one gap between them.
    assert samples[("aif_inter_token_latency_seconds_count", model)] >= 1.0
    tpot = samples[("aif_request_time_per_output_token_seconds_sum", model)]
    assert 0.005 < tpot < 0.5  # about the engine's 10 ms between tokens
    assert samples[("aif_requests_total", (("code", "200"), ("model", "m")))] == 2.0
    assert samples[("aif_requests_in_flight", model)] == 0.0
    assert samples[("aif_instances_ready", model)] == 1.0
    assert samples[("aif_models", (("status", "ACTIVE"),))] == 1.0


def _dashboard_series() -> set[str]:
    """Every aif series a panel of the dashboard plots (a histogram's or counter's family)."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert len(dashboard["panels"]) >= 8
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return {
        re.sub(r"_(bucket|total)$", "", name)
        for expr in exprs
        for name in re.findall(r"\baif_[a-z0-9_]+", expr)
    }


async def test_every_series_the_dashboard_plots_is_exported(engines: Any, gateway: Any) -> None:
    text = await _scrape_after_traffic(engines, gateway)
    families = {family.name for family in text_string_to_metric_families(text)}
    plotted = _dashboard_series()
    assert {"aif_time_to_first_token_seconds", "aif_requests", "aif_instances_ready"} <= plotted
    assert plotted - families == set()


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    rules = [
        {
            "record": f"aif:panel_{panel['id']}_{target['refId']}",
            "expr": _grafana_to_promql(target["expr"]),
        }
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _grafana_to_promql(expr: str) -> str:
    """Grafana's variables as Prometheus itself would see them once substituted."""
    return expr.replace("$__rate_interval", "1m").replace("$model", ".*")
