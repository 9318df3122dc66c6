"""Prometheus's http_sd targets: the gateways, and every ready instance labelled with its model."""

from __future__ import annotations

from domain.records import Endpoint, ModelRecord, Pvc, Slo
from scaler.discovery import http_sd_groups, target


def _record(name: str, *endpoints: Endpoint) -> ModelRecord:
    return ModelRecord(
        name=name, type="QwQ-32B", resource_type="huawei.com/ascend-1980",
        max_instance=4, min_instance=1, replicas=len(endpoints),
        pvc=Pvc(name="release-models", path="Qwen/QwQ-32B"),
        slo=Slo(target_time_to_first_token_p95=1000, target_time_per_output_token_p95=20),
        endpoints=list(endpoints),
    )  # fmt: skip


def test_gateways_and_each_ready_instance_are_groups() -> None:
    records = [
        _record(
            "qwq",
            Endpoint(instance_id="a", url="http://10.0.0.5:8000"),
            Endpoint(instance_id="b", url="http://10.0.0.6:8000/", ready=False),
        ),
        _record("llama", Endpoint(instance_id="c", url="https://llama.svc")),
    ]
    groups = http_sd_groups(["http://gw-0:8080", "gw-1:8080", "http://gw-0:8080"], records)
    assert groups == [
        {"targets": ["gw-0:8080", "gw-1:8080"], "labels": {"aif_role": "gateway"}},
        {
            "targets": ["10.0.0.5:8000"],
            "labels": {
                "aif_role": "engine",
                "model_name": "qwq",
                "model": "qwq",
                "instance_id": "a",
            },
        },
        {
            "targets": ["llama.svc:443"],
            "labels": {
                "aif_role": "engine",
                "model_name": "llama",
                "model": "llama",
                "instance_id": "c",
                "__scheme__": "https",
            },
        },
    ]


def test_nothing_to_scrape_is_an_empty_list() -> None:
    assert http_sd_groups([], [_record("m")]) == []


def test_targets_are_host_and_port() -> None:
    assert target("http://[::1]:9000/v1") == ("[::1]:9000", "http")
    assert target("127.0.0.1:8000") == ("127.0.0.1:8000", "http")
    assert target("http://engine") == ("engine:80", "http")
