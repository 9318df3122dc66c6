"""``aif render``'s body handling: the API's validation, then the manifests."""

from __future__ import annotations

import re

import pytest
import yaml
from pydantic import ValidationError

from api.render import render_documents
from domain.deployment import DeploymentSpec
from domain.records import Pvc
from domain.settings import ClusterConfig
from infra.manifests import render_model
from tests.infra.test_manifests import PRESETS, register_json


def test_render_documents_gives_reproducible_multi_document_yaml() -> None:
    text = render_documents(register_json(), ClusterConfig(pod_monitor=True))
    assert text == render_documents(register_json().encode(), ClusterConfig(pod_monitor=True))
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["LeaderWorkerSet", "Service", "PodMonitor"]
    lws = docs[0]
    assert lws["spec"]["replicas"] == 2  # min_instance
    assert re.fullmatch(r"deepseek-r1-distill-qwen-7b-[0-9a-f]{8}", lws["metadata"]["name"])
    assert re.fullmatch(r"[0-9a-f]{32}", lws["metadata"]["labels"]["aif/model-id"])
    assert docs == render_model(
        DeploymentSpec(
            model_id=lws["metadata"]["labels"]["aif/model-id"],
            name="DeepSeek-R1-Distill-Qwen-7B",
            type="DeepSeek-R1-Distill-Qwen-7B",
            resource_type="huawei.com/ascend-1980",
            version="1.0.0",
            replicas=2,
            pvc=Pvc(name="release-models", path="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
            generation=1,
        ),
        PRESETS["DeepSeek-R1-Distill-Qwen-7B"],
        ClusterConfig(pod_monitor=True),
    )


@pytest.mark.parametrize(
    "body",
    [
        register_json(min_instance=5),
        register_json(type="GPT-5"),
        register_json(pvc={"name": "Bad_Name", "path": "x"}),
        register_json(pvc={"name": "models", "path": "/abs"}),
        "{not json",
    ],
    ids=["min-over-max", "unknown-type", "bad-pvc-name", "absolute-path", "not-json"],
)
def test_render_documents_refuses_what_the_api_refuses(body: str) -> None:
    with pytest.raises(ValidationError):
        render_documents(body, ClusterConfig())
