"""Labels, the label filter, ``resource_version``/``ETag`` and ``If-Match`` on /v1/models."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import register_body, wait_until


def _register(client: TestClient, name: str, labels: dict[str, str]) -> dict[str, Any]:
    response = client.post("/v1/models", json=register_body(name=name, labels=labels))
    assert response.status_code == 201, response.text
    model: dict[str, Any] = response.json()["model"]
    return model


def _names(client: TestClient, *selector: str) -> list[str]:
    response = client.get("/v1/models", params=[("label", s) for s in selector])
    assert response.status_code == 200, response.text
    return [m["name"] for m in response.json()["models"]]


def test_labels_are_stored_shown_and_filtered(client: TestClient) -> None:
    model = _register(client, "a", {"team": "search", "aif.dev/file-set": "prod"})
    _register(client, "b", {"team": "search"})
    _register(client, "c", {"team": "ads"})
    assert model["labels"] == {"team": "search", "aif.dev/file-set": "prod"}
    assert client.get("/v1/models/a").json()["model"]["labels"] == model["labels"]
    assert _names(client, "team=search") == ["a", "b"]
    assert _names(client, "team=search", "aif.dev/file-set=prod") == ["a"]
    assert _names(client, "team=web") == []
    assert _names(client) == ["a", "b", "c"]


def test_put_replaces_the_labels(client: TestClient) -> None:
    _register(client, "a", {"team": "search"})
    response = client.put("/v1/models/a", json={"labels": {"team": "ads"}})
    assert response.status_code == 200, response.text
    assert response.json()["model"]["labels"] == {"team": "ads"}
    assert _names(client, "team=search") == []


@pytest.mark.parametrize(
    ("selector", "named"),
    [("team", "not key=value"), ("-team=x", "-team"), ("team=has space", "team")],
)
def test_a_malformed_label_filter_is_a_422_naming_it(
    client: TestClient, selector: str, named: str
) -> None:
    response = client.get("/v1/models", params={"label": selector})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "label" and named in error["message"]


@pytest.mark.parametrize(
    ("labels", "field"),
    [({"bad key": "x"}, "labels.bad key"), ({"team": "x" * 64}, "labels.team"),
     ({"team": 3}, "labels.team")],
)  # fmt: skip
def test_invalid_labels_are_refused_and_nothing_is_stored(
    client: TestClient, labels: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/models", json=register_body(labels=labels))
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["message"]
    assert client.get("/v1/models").json()["models"] == []


def test_get_carries_the_version_as_etag_and_it_moves_only_with_the_spec(
    client: TestClient,
) -> None:
    model = _register(client, "a", {})
    assert model["resource_version"] == "1"
    response = client.get("/v1/models/a")
    assert response.headers["etag"] == '"1"'
    # The executor deploying it (status, observed state) is not a spec change.
    wait_until(lambda: client.get("/v1/models/a").json()["model"]["status"] == "ACTIVE")
    assert client.get("/v1/models/a").headers["etag"] == '"1"'
    updated = client.put("/v1/models/a", json={"description": "now"})
    assert updated.json()["model"]["resource_version"] == "2"
    assert updated.headers["etag"] == '"2"'


def test_a_stale_if_match_is_a_412_naming_the_current_version(client: TestClient) -> None:
    _register(client, "a", {})
    etag = client.get("/v1/models/a").headers["etag"]
    assert client.put("/v1/models/a", json={"max_instance": 5}).status_code == 200
    stale = client.put("/v1/models/a", json={"max_instance": 6}, headers={"If-Match": etag})
    assert stale.status_code == 412, stale.text
    assert "resource_version 2" in stale.json()["error"]["message"]
    assert client.get("/v1/models/a").json()["model"]["max_instance"] == 5
    gone = client.delete("/v1/models/a", headers={"If-Match": etag})
    assert gone.status_code == 412
    assert client.get("/v1/models/a").json()["model"]["status"] != "DELETING"
    fresh = client.get("/v1/models/a").headers["etag"]
    ok = client.put("/v1/models/a", json={"max_instance": 6}, headers={"If-Match": fresh})
    assert ok.status_code == 200, ok.text
    assert client.delete("/v1/models/a", headers={"If-Match": "3"}).status_code == 202


def test_the_document_describes_if_match_412_and_the_label_filter(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for method in ("put", "delete"):
        operation = paths["/v1/models/{model_id}"][method]
        assert "412" in operation["responses"]
        assert any(p["name"] == "If-Match" for p in operation["parameters"])
    assert "ETag" in paths["/v1/models/{model_id}"]["get"]["responses"]["200"]["headers"]
    assert any(p["name"] == "label" for p in paths["/v1/models"]["get"]["parameters"])


def test_a_bad_body_is_a_422_even_with_a_stale_if_match(client: TestClient) -> None:
    _register(client, "a", {})
    response = client.put("/v1/models/a", json={"max_instance": 10_000}, headers={"If-Match": "9"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "max_instance"
