"""API keys on the framework's routes: who gets in, what each scope may do, what is recorded.

Every app here has the bootstrap admin key (``AIF_ADMIN_KEY``) unless a test says otherwise;
the tests without keys elsewhere show the API open as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import Role, create_app
from api.store.sqlite import SqliteModelStore
from domain.settings import Settings
from tests.conftest import register_body, wait_until
from tests.fakes import FakeDeployer

ADMIN = "sk-aif-bootstrap-admin-for-tests-0123456789"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def keyed(settings: Settings, **overrides: Any) -> Settings:
    return settings.model_copy(update={"admin_key": SecretStr(ADMIN), **overrides})


def frontend_app(settings: Settings, store: SqliteModelStore) -> Any:
    # The frontend alone, forwarding inference nowhere in particular: no engine needed.
    settings = settings.model_copy(update={"chat_executor_url": "http://127.0.0.1:9"})
    return create_app(
        settings, frozenset({Role.FRONTEND}), store=store, deployer_factory=lambda _: FakeDeployer()
    )


@pytest.fixture
def admin_client(settings: Settings, store: SqliteModelStore) -> Iterator[TestClient]:
    with TestClient(frontend_app(keyed(settings), store), headers=bearer(ADMIN)) as client:
        yield client


def create_key(client: TestClient, **body: Any) -> tuple[str, dict[str, Any]]:
    answer = client.post("/v1/keys", json={"name": "app", "scope": "inference", **body})
    assert answer.status_code == 201, answer.text
    created = answer.json()
    return created["secret"], created["key"]


def assert_error(answer: Any, status: int, error_type: str, *words: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == error_type and error["code"] == status
    for word in words:
        assert word in error["message"]
    return error


# --- who gets in -------------------------------------------------------------------------


def test_no_key_is_401_openai_shaped(settings: Settings, store: SqliteModelStore) -> None:
    with TestClient(frontend_app(keyed(settings), store)) as client:
        answer = client.get("/v1/models")
        assert_error(answer, 401, "authentication_error", "Authorization: Bearer")
        assert answer.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/models", json=register_body()).status_code == 401
        assert client.get("/v1/keys").status_code == 401
        # Nothing was registered by the refused request.
        assert store.list() == []


def test_a_wrong_key_is_401(settings: Settings, store: SqliteModelStore) -> None:
    with TestClient(frontend_app(keyed(settings), store)) as client:
        answer = client.get("/v1/models", headers=bearer(ADMIN + "x"))
        assert_error(answer, 401, "authentication_error", "not valid")
        answer = client.get("/v1/models", headers={"Authorization": f"Basic {ADMIN}"})
        assert_error(answer, 401, "authentication_error")


def test_health_ready_and_metrics_stay_open(settings: Settings, store: SqliteModelStore) -> None:
    with TestClient(frontend_app(keyed(settings), store)) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_metrics_can_require_a_key(settings: Settings, store: SqliteModelStore) -> None:
    app = frontend_app(keyed(settings, metrics_require_key=True), store)
    with TestClient(app) as client:
        assert_error(client.get("/metrics"), 401, "authentication_error")
        assert client.get("/metrics", headers=bearer(ADMIN)).status_code == 200
        assert client.get("/health").status_code == 200


def test_the_admin_key_can_come_from_a_file(
    settings: Settings, store: SqliteModelStore, tmp_path: Path
) -> None:
    path = tmp_path / "admin-key"
    path.write_text(ADMIN + "\n")
    app = frontend_app(settings.model_copy(update={"admin_key_file": path}), store)
    with TestClient(app) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers=bearer(ADMIN)).status_code == 200


def test_a_key_in_the_store_turns_keys_on(settings: Settings, store: SqliteModelStore) -> None:
    with TestClient(frontend_app(settings, store)) as client:
        assert client.get("/v1/models").status_code == 200  # open: no key anywhere
        secret, _ = create_key(client, scope="admin")
        assert_error(client.get("/v1/models"), 401, "authentication_error")
        assert client.get("/v1/models", headers=bearer(secret)).status_code == 200


# --- keys: created, listed, revoked --------------------------------------------------------


def test_create_shows_the_secret_once_and_stores_only_its_hash(
    admin_client: TestClient, store: SqliteModelStore
) -> None:
    secret, key = create_key(admin_client, name="chat-app", models=["m1"], rpm=60, tpm=1000)

    assert secret.startswith("sk-") and len(secret) > 40
    assert key["name"] == "chat-app" and key["scope"] == "inference"
    assert (key["models"], key["rpm"], key["tpm"]) == (["m1"], 60, 1000)
    assert key["id"] and key["revoked_at"] is None and secret.startswith(key["prefix"])
    [stored] = store.list_keys()
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in stored.model_dump_json()
    listed = admin_client.get("/v1/keys").json()["keys"]
    assert [k["id"] for k in listed] == [key["id"]]
    assert secret not in admin_client.get("/v1/keys").text
    assert "secret_hash" not in listed[0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a", "scope": "root"}, "scope"),
        ({"name": "", "scope": "admin"}, "name"),
        ({"name": "a", "scope": "inference", "rpm": 0}, "rpm"),
        ({"name": "a", "scope": "admin", "models": ["m1"]}, "models"),
        ({"name": "a", "scope": "inference", "models": []}, "models"),
        ({"name": "a", "scope": "inference", "secret": "mine"}, "secret"),
    ],
)
def test_a_bad_key_body_is_422_naming_the_field_and_stores_nothing(
    admin_client: TestClient, store: SqliteModelStore, body: dict[str, Any], field: str
) -> None:
    error = assert_error(admin_client.post("/v1/keys", json=body), 422, "invalid_request_error")
    assert error["param"] == field
    assert store.list_keys() == []


def test_whole_numbers_written_as_floats_are_the_integers_the_document_promises(
    admin_client: TestClient,
) -> None:
    # JSON Schema's integer includes 100.0; a fraction or a string is still refused.
    _, key = create_key(admin_client, rpm=60.0, tpm=100.0)
    assert (key["rpm"], key["tpm"]) == (60, 100)
    for bad in (100.5, "100"):
        answer = admin_client.post("/v1/keys", json={"name": "x", "scope": "inference", "tpm": bad})
        assert_error(answer, 422, "invalid_request_error", "tpm")
    registered = admin_client.post("/v1/models", json={**register_body(), "max_instance": 2.0})
    assert registered.status_code == 201, registered.text
    assert registered.json()["model"]["max_instance"] == 2


def test_a_revoked_key_is_refused_at_once(admin_client: TestClient) -> None:
    secret, key = create_key(admin_client)
    assert admin_client.get("/v1/models", headers=bearer(secret)).status_code == 200

    answer = admin_client.delete(f"/v1/keys/{key['id']}")

    assert answer.status_code == 200
    assert answer.json()["key"]["revoked_at"] is not None
    assert_error(
        admin_client.get("/v1/models", headers=bearer(secret)), 401, "authentication_error"
    )
    listed = admin_client.get("/v1/keys").json()["keys"]
    assert listed[0]["revoked_at"] is not None


def test_revoking_an_unknown_key_is_404(admin_client: TestClient) -> None:
    assert_error(admin_client.delete("/v1/keys/key_nope"), 404, "not_found_error", "key_nope")
    assert_error(admin_client.delete("/v1/keys/bootstrap-admin"), 409, "conflict_error")


# --- what an inference key may do ----------------------------------------------------------


@pytest.fixture
def inference_secret(admin_client: TestClient) -> str:
    for name in ("m1", "m2"):
        body = register_body(name=name)
        assert admin_client.post("/v1/models", json=body).status_code == 201
    secret, _ = create_key(admin_client, models=["m1"])
    return secret


def test_an_inference_key_sees_only_its_models(
    admin_client: TestClient, inference_secret: str
) -> None:
    as_app = bearer(inference_secret)
    listed = admin_client.get("/v1/models", headers=as_app).json()
    assert [m["name"] for m in listed["models"]] == ["m1"]
    assert [m["id"] for m in listed["data"]] == ["m1"]
    assert admin_client.get("/v1/models/m1", headers=as_app).status_code == 200
    hidden = admin_client.get("/v1/models/m2", headers=as_app)
    missing = admin_client.get("/v1/models/m3", headers=as_app)
    assert_error(hidden, 404, "not_found_error")
    assert (
        hidden.json()["error"]["message"].replace("m2", "m3") == missing.json()["error"]["message"]
    )
    assert_error(admin_client.get("/v1/models/m2/events", headers=as_app), 404, "not_found_error")
    # The admin sees both.
    assert len(admin_client.get("/v1/models").json()["models"]) == 2


def test_an_inference_key_gets_403_on_writes_and_key_management(
    admin_client: TestClient, inference_secret: str, store: SqliteModelStore
) -> None:
    as_app = bearer(inference_secret)
    refused = [
        admin_client.post("/v1/models", json=register_body(name="m9"), headers=as_app),
        admin_client.put("/v1/models/m1", json={"max_instance": 6}, headers=as_app),
        admin_client.delete("/v1/models/m1", headers=as_app),
        admin_client.post("/v1/keys", json={"name": "x", "scope": "admin"}, headers=as_app),
        admin_client.get("/v1/keys", headers=as_app),
        admin_client.delete("/v1/keys/key_x", headers=as_app),
        admin_client.get("/v1/audit", headers=as_app),
    ]
    for answer in refused:
        assert_error(answer, 403, "permission_error", "admin key")
    assert {r.name for r in store.list()} == {"m1", "m2"}
    assert store.get_by_name("m1").max_instance == 4  # type: ignore[union-attr]
    assert len(store.list_keys()) == 1


# --- the audit trail ---------------------------------------------------------------------


def test_every_change_is_recorded_with_who_what_and_when(admin_client: TestClient) -> None:
    secret, key = create_key(admin_client, name="operator", scope="admin")
    as_operator = bearer(secret)
    model = admin_client.post("/v1/models", json=register_body(), headers=as_operator).json()
    model_id = model["model"]["id"]
    admin_client.put(f"/v1/models/{model_id}", json={"max_instance": 6}, headers=as_operator)
    admin_client.delete(f"/v1/models/{model_id}")
    admin_client.delete(f"/v1/keys/{key['id']}")

    events = admin_client.get(f"/v1/models/{model_id}/events").json()["events"]
    assert [(e["action"], e["actor"]) for e in events] == [
        ("model.register", key["id"]),
        ("model.update", key["id"]),
        ("model.delete", "bootstrap-admin"),
    ]
    assert events[0]["changes"]["max_instance"] == {"to": 4}
    assert events[1]["changes"] == {"max_instance": {"from": 4, "to": 6}}
    assert events[2]["changes"]["status"]["to"] == "DELETING"
    assert all(e["at"].endswith("Z") for e in events)

    trail = admin_client.get("/v1/audit").json()["events"]
    assert [e["action"] for e in trail] == [
        "key.create", "model.register", "model.update", "model.delete", "key.revoke",
    ]  # fmt: skip
    assert trail[0]["key_id"] == key["id"] and trail[0]["actor"] == "bootstrap-admin"
    assert trail[0]["changes"]["scope"] == {"to": "admin"}
    assert trail[-1]["key_id"] == key["id"] and trail[-1]["changes"]["revoked_at"]["to"]
    assert [e["action"] for e in admin_client.get("/v1/audit?limit=2").json()["events"]] == [
        "model.delete", "key.revoke",
    ]  # fmt: skip


def test_events_of_a_model_that_never_was_are_404(admin_client: TestClient) -> None:
    assert_error(admin_client.get("/v1/models/ghost/events"), 404, "not_found_error", "ghost")
    assert_error(admin_client.get("/v1/audit?limit=0"), 422, "invalid_request_error")


# --- across restarts and processes ---------------------------------------------------------


def test_keys_and_audit_survive_a_restart(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "aif.db"
    store = SqliteModelStore(path)
    with TestClient(frontend_app(keyed(settings), store), headers=bearer(ADMIN)) as client:
        secret, _ = create_key(client)
        assert client.post("/v1/models", json=register_body()).status_code == 201
    store.close()

    store = SqliteModelStore(path)
    try:
        with TestClient(frontend_app(settings, store)) as client:  # no admin key this time
            assert client.get("/v1/models").status_code == 401  # the stored key keeps it closed
            assert client.get("/v1/models", headers=bearer(secret)).status_code == 200
            assert client.get("/v1/audit", headers=bearer(secret)).status_code == 403
        events = store.events()
    finally:
        store.close()
    assert [e.action for e in events] == ["key.create", "model.register"]


def test_a_key_revoked_in_one_process_is_refused_by_another_within_the_bound(
    settings: Settings,
) -> None:
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
            one.delete(f"/v1/keys/{key['id']}")
            wait_until(
                lambda: two.get("/v1/models", headers=bearer(secret)).status_code == 401,
                timeout_s=5,
            )
    finally:
        first.close()
        second.close()


class CountingStore(SqliteModelStore):
    """Counts the reads of keys: what a request must never cause."""

    key_reads = 0

    def list_keys(self) -> Any:
        self.key_reads += 1
        return super().list_keys()

    def keys_version(self) -> str:
        self.key_reads += 1
        return super().keys_version()


def test_checking_a_key_reads_nothing_from_the_store(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = CountingStore(settings.data_dir / "aif.db")
    slow = keyed(settings, keys_refresh_s=3600)  # no refresh during the test
    try:
        with TestClient(frontend_app(slow, store), headers=bearer(ADMIN)) as client:
            secret, _ = create_key(client, scope="admin")
            before = store.key_reads
            for _ in range(20):
                assert client.get("/v1/models", headers=bearer(secret)).status_code == 200
                assert client.get("/v1/models", headers=bearer("sk-wrong")).status_code == 401
                assert client.post("/v1/completions", headers=bearer("no")).status_code == 401
            assert store.key_reads == before
    finally:
        store.close()


def test_openapi_documents_the_key_and_its_refusals(admin_client: TestClient) -> None:
    document = admin_client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, methods in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in methods.items():
            for status in ("401", "403", "429"):
                assert status in operation["responses"], (method, path, status)
    create = document["paths"]["/v1/keys"]["post"]
    assert "201" in create["responses"] and "422" in create["responses"]
    assert "/v1/audit" in document["paths"]
    assert "/v1/models/{model_id}/events" in document["paths"]


def test_revoking_every_key_does_not_open_the_api(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "aif.db"
    store = SqliteModelStore(path)
    with TestClient(frontend_app(settings, store)) as client:
        secret, key = create_key(client, scope="admin")
        client.delete(f"/v1/keys/{key['id']}", headers=bearer(secret))
        assert_error(client.get("/v1/models"), 401, "authentication_error")
    store.close()
    store = SqliteModelStore(path)  # and after a restart
    try:
        with TestClient(frontend_app(settings, store)) as client:
            assert_error(client.get("/v1/models"), 401, "authentication_error")
    finally:
        store.close()
