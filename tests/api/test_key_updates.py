"""``PUT /v1/keys/{id}``: a key's limits and name changed without a new secret, and audited.

The frontend alone, with the bootstrap admin key, as in ``test_keys.py``; the limits are
checked on the framework's routes, where the same ring admits every request.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.store.sqlite import SqliteModelStore
from domain.settings import Settings
from tests.api.test_keys import ADMIN, assert_error, bearer, create_key, frontend_app, keyed
from tests.conftest import wait_until


@pytest.fixture
def admin_client(settings: Settings, store: SqliteModelStore) -> Iterator[TestClient]:
    with TestClient(frontend_app(keyed(settings), store), headers=bearer(ADMIN)) as client:
        yield client


def test_an_update_replaces_given_fields_keeps_the_rest_and_is_audited(
    admin_client: TestClient, store: SqliteModelStore
) -> None:
    secret, key = create_key(admin_client, models=["m1"], rpm=60, tpm=1000)

    answer = admin_client.put(
        f"/v1/keys/{key['id']}",
        json={"tpm": None, "token_budget": 50_000, "budget_period": "day", "priority": "batch"},
    )

    assert answer.status_code == 200, answer.text
    updated = answer.json()["key"]
    assert (updated["models"], updated["rpm"], updated["tpm"]) == (["m1"], 60, None)
    assert (updated["token_budget"], updated["budget_period"]) == (50_000, "day")
    assert updated["priority"] == "batch" and updated["prefix"] == key["prefix"]
    [stored] = store.list_keys()
    assert (stored.tpm, stored.token_budget, stored.weight) == (None, 50_000, 1.0)
    # The same secret still works.
    assert admin_client.get("/v1/models", headers=bearer(secret)).status_code == 200
    event = admin_client.get("/v1/audit").json()["events"][-1]
    assert (event["action"], event["actor"], event["key_id"]) == (
        "key.update", "bootstrap-admin", key["id"],
    )  # fmt: skip
    assert event["changes"] == {
        "tpm": {"from": 1000, "to": None},
        "token_budget": {"from": None, "to": 50_000},
        "budget_period": {"from": "month", "to": "day"},
        "priority": {"from": "interactive", "to": "batch"},
    }


def test_no_change_is_200_with_no_event(admin_client: TestClient) -> None:
    _, key = create_key(admin_client, rpm=60)
    events = len(admin_client.get("/v1/audit").json()["events"])

    answer = admin_client.put(f"/v1/keys/{key['id']}", json={"rpm": 60, "name": "app"})

    assert answer.status_code == 200 and answer.json()["key"]["rpm"] == 60
    assert len(admin_client.get("/v1/audit").json()["events"]) == events


def test_a_lowered_rpm_applies_at_once(admin_client: TestClient) -> None:
    secret, key = create_key(admin_client, rpm=1000)
    for _ in range(3):
        assert admin_client.get("/v1/models", headers=bearer(secret)).status_code == 200

    # The new limit counts what the key was admitted in the last minute: one more, not four.
    admin_client.put(f"/v1/keys/{key['id']}", json={"rpm": 4})

    assert admin_client.get("/v1/models", headers=bearer(secret)).status_code == 200
    refused = admin_client.get("/v1/models", headers=bearer(secret))
    assert_error(refused, 429, "rate_limit_error", "4 requests per minute")
    # And cleared: no limit at all.
    admin_client.put(f"/v1/keys/{key['id']}", json={"rpm": None})
    assert admin_client.get("/v1/models", headers=bearer(secret)).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rpm": 0}, "rpm"),
        ({"weight": None}, "weight"),
        ({"budget_period": "week"}, "budget_period"),
        ({"priority": "urgent"}, "priority"),
        ({"scope": "admin"}, "scope"),
        ({"secret": "mine"}, "secret"),
        ({"models": []}, "models"),
    ],
)
def test_a_bad_update_is_422_naming_the_field_and_changes_nothing(
    admin_client: TestClient, store: SqliteModelStore, body: dict[str, Any], field: str
) -> None:
    _, key = create_key(admin_client, rpm=60)
    before = store.list_keys()

    answer = admin_client.put(f"/v1/keys/{key['id']}", json=body)

    assert assert_error(answer, 422, "invalid_request_error")["param"] == field
    assert store.list_keys() == before


def test_an_admin_key_cannot_be_limited_to_models(
    admin_client: TestClient, store: SqliteModelStore
) -> None:
    _, key = create_key(admin_client, scope="admin")
    answer = admin_client.put(f"/v1/keys/{key['id']}", json={"models": ["m1"]})
    assert assert_error(answer, 409, "conflict_error", "admin key")["param"] == "models"
    assert store.list_keys()[0].models is None


def test_unknown_revoked_and_bootstrap_keys_are_refused(
    admin_client: TestClient, store: SqliteModelStore
) -> None:
    _, key = create_key(admin_client)
    store.revoke_key(key["id"], datetime.now(UTC))

    assert_error(admin_client.put("/v1/keys/key_nope", json={"rpm": 5}), 404, "not_found_error")
    revoked = admin_client.put(f"/v1/keys/{key['id']}", json={"rpm": 5})
    assert_error(revoked, 409, "conflict_error", "revoked")
    bootstrap = admin_client.put("/v1/keys/bootstrap-admin", json={"rpm": 5})
    assert_error(bootstrap, 409, "conflict_error", "AIF_ADMIN_KEY")
    assert store.list_keys()[0].rpm is None


def test_an_inference_key_cannot_update_keys(admin_client: TestClient) -> None:
    secret, key = create_key(admin_client)
    answer = admin_client.put(f"/v1/keys/{key['id']}", json={"rpm": 5}, headers=bearer(secret))
    assert_error(answer, 403, "permission_error", "admin key")


def test_another_process_takes_the_update_within_the_refresh_bound(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "aif.db"
    fast = keyed(settings, keys_refresh_s=0.05)
    first, second = SqliteModelStore(path), SqliteModelStore(path)
    try:
        with (
            TestClient(frontend_app(fast, first), headers=bearer(ADMIN)) as one,
            TestClient(frontend_app(fast, second)) as two,
        ):
            secret, key = create_key(one)
            wait_until(lambda: two.get("/v1/models", headers=bearer(secret)).status_code == 200)
            one.put(f"/v1/keys/{key['id']}", json={"rpm": 1})
            statuses: list[int] = []
            for _ in range(200):
                statuses.append(two.get("/v1/models", headers=bearer(secret)).status_code)
                if statuses[-1] == 429:
                    break
            assert statuses[-1] == 429
    finally:
        first.close()
        second.close()
