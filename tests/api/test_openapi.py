"""The OpenAPI document tells what the API answers: every error status on every route, the
methods of a path in ``Allow``, and schemas no looser than the validators."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from api.errors import ERROR_STATUSES
from domain.settings import Settings
from tests.conftest import register_body


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_every_route_documents_every_error_status(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operations = _operations(document)
    assert len(operations) >= 11
    for path, method, operation in operations:
        documented = {int(code) for code in operation["responses"] if code.isdigit()}
        missing = set(ERROR_STATUSES) - documented
        assert not missing, f"{method.upper()} {path} does not document {sorted(missing)}"


def test_a_wrong_method_lists_every_method_of_the_path(client: TestClient) -> None:
    listed = client.options("/v1/models")
    assert listed.status_code == 405
    assert listed.headers["allow"] == "GET, POST"
    assert listed.json()["error"]["code"] == 405
    one = client.options("/v1/models/some-model")
    assert one.headers["allow"] == "DELETE, GET, PUT"
    chat = client.get("/v1/chat/completions")
    assert chat.status_code == 405
    assert chat.headers["allow"] == "POST"


def test_the_schema_offers_only_what_the_validators_take(
    client: TestClient, settings: Settings
) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    create, update = schemas["ModelCreate"]["properties"], schemas["ModelUpdate"]["properties"]
    assert "DeepSeek-R1-Distill-Qwen-7B" in create["type"]["enum"]
    cap = settings.max_instance_cap
    assert create["max_instance"]["maximum"] == cap  # AIF_MAX_INSTANCE_CAP
    assert (
        schemas["SloSpec"]["properties"]["target_time_to_first_token_p95"]["exclusiveMinimum"] == 0
    )
    assert all("null" not in str(prop) for prop in update.values())
    # What the schema offers is taken: the largest instance count and a tiny positive SLO.
    body = register_body(max_instance=cap, min_instance=cap)
    body["slo"]["target_time_to_first_token_p95"] = 1e-300
    assert client.post("/v1/models", json=body).status_code == 201
    # And null, which the schema does not offer, is refused.
    refused = client.put(f"/v1/models/{body['name']}", json={"type": None})
    assert refused.status_code == 422
