"""The /v1/models contract: every endpoint and every validation rule, through HTTP."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.store.sqlite import SqliteModelStore
from domain.deployment import Phase
from domain.records import ModelRecord
from tests.conftest import register_body, wait_until
from tests.fakes import FakeDeployer

SPEC_FIELDS = {
    "name",
    "type",
    "resource_type",
    "version",
    "max_instance",
    "min_instance",
    "pvc",
    "slo",
    "description",
    "replicas",
    "generation",
}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _register(client: TestClient, **overrides: Any) -> dict[str, Any]:
    response = client.post("/v1/models", json=register_body(**overrides))
    assert response.status_code == 201, response.text
    model: dict[str, Any] = response.json()["model"]
    return model


def _spec(record: ModelRecord | None) -> dict[str, Any]:
    """What a user set on a model; the executor's own writes leave it alone."""
    assert record is not None
    return record.model_dump(exclude=set(ModelRecord.model_fields) - SPEC_FIELDS)


def _status(client: TestClient, ref: str) -> str:
    status: str = client.get(f"/v1/models/{ref}").json()["model"]["status"]
    return status


def test_register_returns_the_product_record(client: TestClient) -> None:
    model = _register(client)
    assert re.fullmatch(r"[0-9a-f]{32}", model["id"])
    assert model["name"] == "DeepSeek-R1-Distill-Qwen-7B"
    assert model["resource_type"] == "huawei.com/ascend-1980"
    assert model["pvc"] == register_body()["pvc"]
    assert model["slo"] == {
        "target_time_to_first_token_p95": 1000,
        "target_time_per_output_token_p95": 20,
    }
    assert model["status"] == "DEPLOYING"
    assert model["status_code"] == ""
    assert TIMESTAMP.match(model["created_at"]) and TIMESTAMP.match(model["updated_at"])
    assert model["instances"] == 2


def test_registered_model_becomes_active_with_min_instances(
    client: TestClient, deployer: FakeDeployer
) -> None:
    model = _register(client)
    wait_until(lambda: _status(client, model["id"]) == "ACTIVE")
    assert deployer.running[model["id"]] == 2
    got = client.get(f"/v1/models/{model['id']}").json()["model"]
    assert got["ready_instances"] == 2
    assert got["status_msg"] == ""


def test_min_instance_zero_starts_one_and_says_it_may_scale_to_zero(
    client: TestClient, deployer: FakeDeployer
) -> None:
    model = _register(client, min_instance=0, max_instance=2)
    assert model["min_instance"] == 0 and model["instances"] == 1
    wait_until(lambda: _status(client, model["id"]) == "ACTIVE")
    assert deployer.running[model["id"]] == 1


def test_get_by_name_and_by_id(client: TestClient) -> None:
    model = _register(client)
    by_name = client.get("/v1/models/DeepSeek-R1-Distill-Qwen-7B")
    assert by_name.status_code == 200
    assert by_name.json()["model"]["id"] == model["id"]


def test_list_has_product_and_openai_shapes(client: TestClient) -> None:
    first = _register(client)
    second = _register(client, name="Qwen2.5-72B-Instruct", type="Qwen2.5-72B-Instruct")
    body = client.get("/v1/models").json()
    assert [m["id"] for m in body["models"]] == [first["id"], second["id"]]
    assert body["object"] == "list"
    assert [card["id"] for card in body["data"]] == [
        "DeepSeek-R1-Distill-Qwen-7B",
        "Qwen2.5-72B-Instruct",
    ]
    assert all(card["object"] == "model" and card["owned_by"] for card in body["data"])
    assert all(isinstance(card["created"], int) for card in body["data"])


def test_put_max_instance_keeps_active(client: TestClient, deployer: FakeDeployer) -> None:
    model = _register(client)
    wait_until(lambda: _status(client, model["id"]) == "ACTIVE")
    response = client.put(f"/v1/models/{model['id']}", json={"max_instance": 6})
    assert response.status_code == 200
    updated = response.json()["model"]
    assert updated["max_instance"] == 6
    assert updated["min_instance"] == 2
    assert updated["status"] == "ACTIVE"
    assert updated["updated_at"] >= model["updated_at"]


def test_put_raising_min_scales_up_through_updating(
    client: TestClient, deployer: FakeDeployer
) -> None:
    model = _register(client)
    wait_until(lambda: _status(client, model["id"]) == "ACTIVE")
    updated = client.put(f"/v1/models/{model['id']}", json={"min_instance": 3}).json()["model"]
    assert updated["status"] == "UPDATING"
    assert updated["instances"] == 3
    wait_until(lambda: _status(client, model["id"]) == "ACTIVE")
    assert deployer.running[model["id"]] == 3


def test_put_validates_against_the_merged_record(
    client: TestClient, store: SqliteModelStore
) -> None:
    model = _register(client)
    before = store.get(model["id"])
    response = client.put(f"/v1/models/{model['id']}", json={"min_instance": 5})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "min_instance"
    assert "max_instance (4)" in error["message"]
    after = store.get(model["id"])
    assert before is not None and after is not None
    assert _spec(after) == _spec(before)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"name": "other"}, "name"),
        ({"status": "ACTIVE"}, "status"),
        ({"max_instance": -1}, "max_instance"),
        ({"max_instance": 9}, "max_instance"),
        ({"max_instance": None}, "max_instance"),
        ({"type": "gpt-5"}, "type"),
        ({"pvc": {"name": "release-models", "path": "../etc"}}, "pvc.path"),
    ],
)
def test_put_refuses_bad_patches(
    client: TestClient, store: SqliteModelStore, patch: dict[str, Any], field: str
) -> None:
    model = _register(client)
    before = _spec(store.get(model["id"]))
    response = client.put(f"/v1/models/{model['id']}", json=patch)
    assert response.status_code == 422, response.text
    assert field.split(".")[0] in response.json()["error"]["message"]
    assert _spec(store.get(model["id"])) == before


def test_delete_shows_deleting_then_404(client: TestClient, deployer: FakeDeployer) -> None:
    model = _register(client)
    wait_until(lambda: _status(client, model["id"]) == "ACTIVE")
    response = client.delete(f"/v1/models/{model['id']}")
    assert response.status_code == 202
    assert response.json()["model"]["status"] == "DELETING"
    wait_until(lambda: client.get(f"/v1/models/{model['id']}").status_code == 404)
    assert deployer.removed == [model["id"]]
    assert model["id"] not in deployer.running
    # The name is free again.
    _register(client)


def test_unknown_id_is_404_everywhere(client: TestClient) -> None:
    ref = "0" * 32
    for method in ("get", "delete"):
        response = client.request(method.upper(), f"/v1/models/{ref}")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"
    assert client.put(f"/v1/models/{ref}", json={"max_instance": 3}).status_code == 404


def test_duplicate_name_is_409_and_stores_nothing(client: TestClient) -> None:
    _register(client)
    response = client.post("/v1/models", json=register_body(description="again"))
    assert response.status_code == 409
    assert "already exists" in response.json()["error"]["message"]
    assert len(client.get("/v1/models").json()["models"]) == 1


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"type": "gpt-5"}, "type", "available types: DeepSeek-R1-Distill-Llama-70B"),
        ({"resource_type": "amd.com/gpu"}, "resource_type", "huawei.com/ascend-1980"),
        ({"min_instance": 5}, "min_instance", "must not be greater than max_instance"),
        ({"min_instance": -1}, "min_instance", "greater than or equal to 0"),
        ({"max_instance": -2}, "max_instance", "greater than or equal to 1"),
        ({"max_instance": 9, "min_instance": 1}, "max_instance", "AIF_MAX_INSTANCE_CAP"),
        ({"name": "bad name!"}, "name", "should match pattern"),
        ({"name": "x" * 64}, "name", "at most 63 characters"),
        ({"name": ""}, "name", "at least 1 character"),
        ({"pvc": {"name": "m", "path": "/abs/path"}}, "pvc.path", "not an absolute path"),
        ({"pvc": {"name": "m", "path": "a/../../b"}}, "pvc.path", "'..'"),
        ({"pvc": {"name": "Bad_PVC", "path": "a"}}, "pvc.name", "should match pattern"),
        (
            {"slo": {"target_time_to_first_token_p95": 0, "target_time_per_output_token_p95": 20}},
            "slo.target_time_to_first_token_p95",
            "greater than 0",
        ),
        (
            {
                "slo": {
                    "target_time_to_first_token_p95": 100,
                    "target_time_per_output_token_p95": -1,
                }
            },
            "slo.target_time_per_output_token_p95",
            "greater than 0",
        ),
        ({"max_instance": "4"}, "max_instance", "valid integer"),
        ({"max_instance": 2.5}, "max_instance", "valid integer"),
        ({"pvc": "release-models"}, "pvc", "valid dictionary"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
        ({"version": "not a label!"}, "version", "should match pattern"),
    ],
)
def test_register_refuses_bad_input(
    client: TestClient, overrides: dict[str, Any], field: str, words: str
) -> None:
    response = client.post("/v1/models", json=register_body(**overrides))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == field
    assert words in error["message"]
    assert field in error["message"]
    assert client.get("/v1/models").json()["models"] == []


def test_register_refuses_missing_fields(client: TestClient) -> None:
    body = register_body()
    del body["pvc"]
    response = client.post("/v1/models", json=body)
    assert response.status_code == 422
    assert "pvc: Field required" in response.json()["error"]["message"]


def test_product_names_with_capitals_and_dots_work(client: TestClient) -> None:
    model = _register(client, name="Qwen2.5-72B-Instruct", type="Qwen2.5-72B-Instruct")
    assert client.get("/v1/models/Qwen2.5-72B-Instruct").json()["model"]["id"] == model["id"]


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/models", content=b'{"name": "x",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]
    assert client.get("/v1/models").json()["models"] == []


def test_oversized_body_is_413(client: TestClient) -> None:
    body = register_body(description="x" * 100_000)
    response = client.post("/v1/models", json=body)
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]["message"]
    assert client.get("/v1/models").json()["models"] == []


def test_chunked_oversized_body_is_413(client: TestClient) -> None:
    def chunks() -> Any:
        yield b'{"description": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    response = client.post(
        "/v1/models", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_failing_deployment_ends_failed_with_reason(
    client: TestClient, deployer: FakeDeployer
) -> None:
    deployer.phase = Phase.FAILED
    deployer.reason = "PvcNotFound"
    deployer.message = "PVC 'release-models' not found: create it and copy the weights"
    model = _register(client)
    wait_until(lambda: _status(client, model["id"]) == "FAILED")
    got = client.get(f"/v1/models/{model['id']}").json()["model"]
    assert got["status_code"] == "PvcNotFound"
    assert "create it" in got["status_msg"]
    attempts = len(deployer.applied)
    assert attempts == 3  # max_attempts in the test settings
    # A fix by the user starts the model over.
    deployer.phase = Phase.READY
    client.put(f"/v1/models/{model['id']}", json={"version": "1.0.1"})
    wait_until(lambda: _status(client, model["id"]) == "ACTIVE")


def test_openapi_describes_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/v1/models"]) == {"get", "post"}
    assert set(paths["/v1/models/{model_id}"]) == {"get", "put", "delete"}
    assert "/v1/chat/completions" in paths and "/v1/completions" in paths
    assert "ModelCreate" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_the_measured_capacity_is_shown_under_scaling(
    client: TestClient, store: SqliteModelStore
) -> None:
    from domain.records import Capacity
    from domain.store import rewrite

    model = _register(client)
    shown = client.get(f"/v1/models/{model['id']}").json()["model"]["scaling"]["capacity"]
    assert shown == {"concurrency_per_instance": None, "tokens_per_s": None, "source": "",
                     "samples": 0, "measured_at": None}  # fmt: skip

    def measured(record: ModelRecord) -> ModelRecord:
        record.scaling.capacity = Capacity(
            concurrency_per_instance=42.5, tokens_per_s=900.0, source="profile", samples=6,
            measured_at=record.updated_at,
        )  # fmt: skip
        return record

    rewrite(store, model["id"], measured)
    shown = client.get(f"/v1/models/{model['id']}").json()["model"]["scaling"]["capacity"]
    assert shown["concurrency_per_instance"] == 42.5 and shown["tokens_per_s"] == 900.0
    assert shown["source"] == "profile" and shown["samples"] == 6
    assert TIMESTAMP.match(shown["measured_at"])
