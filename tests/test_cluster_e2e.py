"""The product walkthrough against a real cluster: register → ACTIVE → chat → delete.

Runs against an installed aif (``pulumi up`` of the root ``Pulumi.yaml``, see
docs/kubernetes.md) reached at ``AIF_E2E_URL`` (e.g. ``http://127.0.0.1:8080`` through
``kubectl port-forward svc/frontend-service 8080:80``), and checks the cluster itself through
``KUBECONFIG``. What to register is read from the environment, so the same test runs on a kind
cluster with fake accelerators and on CCE with Ascend NPUs:

- ``AIF_E2E_MODEL_TYPE`` (default ``DeepSeek-R1-Distill-Qwen-7B``), ``AIF_E2E_RESOURCE_TYPE``
  (default ``huawei.com/ascend-1980``), ``AIF_E2E_PVC`` / ``AIF_E2E_PVC_PATH`` (the weights'
  PVC in the models namespace), ``AIF_E2E_NAMESPACE`` (default ``aif-models``),
  ``AIF_E2E_TIMEOUT_S`` (default 1800: a 7B model loads from object storage in minutes).

Skipped, with the reason, unless ``KUBECONFIG`` is set, ``pulumi`` is on PATH and
``AIF_E2E_URL`` is given.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

if not os.environ.get("KUBECONFIG") or shutil.which("pulumi") is None:
    pytest.skip("cluster e2e: needs KUBECONFIG and the pulumi CLI on PATH", allow_module_level=True)
if not os.environ.get("AIF_E2E_URL"):
    pytest.skip(
        "cluster e2e: set AIF_E2E_URL to an installed aif's frontend-service",
        allow_module_level=True,
    )

from infra.cluster_observer import KubernetesObserver
from infra.manifests import k8s_name

pytestmark = pytest.mark.cluster

POLL_S = 5.0
TIMEOUT_S = float(os.environ.get("AIF_E2E_TIMEOUT_S", "1800"))
NAMESPACE = os.environ.get("AIF_E2E_NAMESPACE", "aif-models")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=os.environ["AIF_E2E_URL"], timeout=120.0) as c:
        yield c


@pytest.fixture
def cluster() -> Iterator[KubernetesObserver]:
    observer = KubernetesObserver()
    yield observer
    observer.close()


def register_body(name: str) -> dict[str, Any]:
    model_type = os.environ.get("AIF_E2E_MODEL_TYPE", "DeepSeek-R1-Distill-Qwen-7B")
    return {
        "name": name,
        "type": model_type,
        "resource_type": os.environ.get("AIF_E2E_RESOURCE_TYPE", "huawei.com/ascend-1980"),
        "version": "1.0.0",
        "max_instance": 1,
        "min_instance": 1,
        "pvc": {
            "name": os.environ.get("AIF_E2E_PVC", "release-models"),
            "path": os.environ.get("AIF_E2E_PVC_PATH", f"deepseek-ai/{model_type}"),
        },
        "slo": {"target_time_to_first_token_p95": 1000, "target_time_per_output_token_p95": 20},
        "description": "aif cluster e2e",
    }


def wait_for(client: httpx.Client, model_id: str, want: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    model: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/models/{model_id}")
        if want == "GONE" and response.status_code == 404:
            return {}
        response.raise_for_status()
        model = response.json()["model"]
        if model["status"] == want:
            return model
        assert model["status"] != "FAILED", f"{model['status_code']}: {model['status_msg']}"
        time.sleep(POLL_S)
    raise AssertionError(f"not {want} within {TIMEOUT_S:.0f}s; last seen {model}")


def test_register_serve_and_delete(client: httpx.Client, cluster: KubernetesObserver) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    created = client.post("/v1/models", json=register_body(name))
    assert created.status_code == 201, created.text
    model = created.json()["model"]
    model_id = model["id"]
    lws_name = k8s_name(name, model_id)
    try:
        active = wait_for(client, model_id, "ACTIVE")
        assert active["status_code"] == ""
        lws = cluster.leader_worker_set(NAMESPACE, lws_name)
        assert lws is not None
        assert lws.ready_replicas >= 1

        answer = client.post(
            "/v1/chat/completions",
            json={
                "model": name,
                "messages": [{"role": "user", "content": "How many r's are in strawberry?"}],
                "stream": False,
                "max_tokens": 16,
            },
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]
    finally:
        deleted = client.delete(f"/v1/models/{model_id}")
        assert deleted.status_code in (202, 404), deleted.text
        wait_for(client, model_id, "GONE")

    assert cluster.leader_worker_set(NAMESPACE, lws_name) is None
