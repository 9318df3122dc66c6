"""``/v1/accelerators`` on the app as ``aif serve`` builds it: the inventory, admin only, the
quarantine and release routes with their audit, the ``aif_accelerators`` gauge, ``priority``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.store import SqliteModelStore
from domain.settings import Settings
from tests.api.test_keys import ADMIN, assert_error, bearer, create_key, frontend_app, keyed
from tests.conftest import register_body


@pytest.fixture
def admin(settings: Settings, store: SqliteModelStore) -> Iterator[TestClient]:
    cards = keyed(settings, local_accelerators='{"node-a": 2, "node-b": 2}')
    with TestClient(create_app(cards, store=store), headers=bearer(ADMIN)) as client:
        yield client


def test_the_inventory_has_totals_per_type_and_node(admin: TestClient) -> None:
    view = admin.get("/v1/accelerators").json()
    assert view["totals"] == {"huawei.com/ascend-1980": {"free": 4, "allocated": 0,
                                                         "quarantined": 0}}  # fmt: skip
    assert [(n["node"], n["free"]) for n in view["nodes"]] == [("node-a", 2), ("node-b", 2)]
    assert {(c["node"], c["index"], c["state"]) for c in view["cards"]} == {
        ("node-a", 0, "free"), ("node-a", 1, "free"), ("node-b", 0, "free"), ("node-b", 1, "free")
    }  # fmt: skip


def test_an_inference_key_gets_403(admin: TestClient) -> None:
    secret, _ = create_key(admin)
    answer = admin.get("/v1/accelerators", headers=bearer(secret))
    assert_error(answer, 403, "permission_error", "admin")
    answer = admin.post("/v1/accelerators/node-a/0/quarantine", json={"reason": "x"},
                        headers=bearer(secret))  # fmt: skip
    assert_error(answer, 403, "permission_error")
    assert admin.get("/v1/accelerators").json()["totals"]["huawei.com/ascend-1980"]["free"] == 4


def test_quarantine_and_release_are_audited_and_shown(
    admin: TestClient, store: SqliteModelStore
) -> None:
    answer = admin.post("/v1/accelerators/node-b/1/quarantine", json={"reason": "ECC errors"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"node": "node-b", "index": 1, "state": "quarantined", "changed": True}
    card = next(c for c in admin.get("/v1/accelerators").json()["cards"]
                if (c["node"], c["index"]) == ("node-b", 1))  # fmt: skip
    assert card["state"] == "quarantined"
    assert card["quarantine"]["reason"] == "ECC errors"
    assert [q.key for q in store.quarantines()] == [("node-b", 1)]
    scrape = admin.get("/metrics").text
    assert 'aif_accelerators{node="node-b",resource_type="huawei.com/ascend-1980",' \
        'state="quarantined"} 1.0' in scrape  # fmt: skip

    released = admin.post("/v1/accelerators/node-b/1/release").json()
    assert released == {"node": "node-b", "index": 1, "state": "free", "changed": True}
    assert admin.post("/v1/accelerators/node-b/1/release").json()["changed"] is False
    assert store.quarantines() == []
    events = admin.get("/v1/audit").json()["events"]
    actions = [(e["action"], e["changes"], e["reason"]) for e in events]
    assert actions == [
        ("accelerator.quarantine", {"card": {"to": "node-b/1"}}, "ECC errors"),
        ("accelerator.release", {"card": {"from": "node-b/1"}}, "by an admin"),
    ]


def test_bad_cards_and_bodies_are_4xx_and_change_nothing(
    admin: TestClient, store: SqliteModelStore
) -> None:
    answer = admin.post("/v1/accelerators/node-c/0/quarantine", json={"reason": "x"})
    assert_error(answer, 404, "not_found_error", "node-c/0")
    answer = admin.post("/v1/accelerators/node-a/2/quarantine", json={"reason": "x"})
    assert_error(answer, 404, "not_found_error", "node-a/2")
    answer = admin.post("/v1/accelerators/node-a/0/quarantine", json={})
    assert answer.status_code == 422 and "reason" in answer.text
    answer = admin.post("/v1/accelerators/node-a/x/quarantine", json={"reason": "x"})
    assert answer.status_code == 422 and "index" in answer.text
    assert store.quarantines() == [] and admin.get("/v1/audit").json()["events"] == []


def test_priority_is_accepted_by_post_and_put(settings: Settings, store: SqliteModelStore) -> None:
    with TestClient(frontend_app(keyed(settings), store), headers=bearer(ADMIN)) as admin:
        _priority(admin)


def _priority(admin: TestClient) -> None:
    created = admin.post("/v1/models", json=register_body(priority=5)).json()["model"]
    assert created["priority"] == 5
    updated = admin.put(f"/v1/models/{created['id']}", json={"priority": -1}).json()["model"]
    assert updated["priority"] == -1
    assert admin.put(f"/v1/models/{created['id']}", json={"priority": "high"}).status_code == 422
    schema = admin.get("/openapi.json").json()["components"]["schemas"]["ModelCreate"]
    assert "priority" in schema["properties"]
