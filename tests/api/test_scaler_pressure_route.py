"""``POST /v1/scaler/pressure`` on a task-executor-manager: admin only, its body checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import Role, create_app
from api.store.sqlite import SqliteModelStore
from domain.settings import Settings

ADMIN = "aif-admin-" + "q" * 32


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path, admin_key=ADMIN, gateway_metrics_urls=["http://127.0.0.1:9"]
    )
    store = SqliteModelStore(tmp_path / "aif.db")
    app = create_app(settings, frozenset({Role.TASK_EXECUTOR_MANAGER}), store=store)
    with TestClient(app) as client:
        yield client
    store.close()


def test_a_report_is_accepted_from_the_admin_key(manager: TestClient) -> None:
    answer = manager.post(
        "/v1/scaler/pressure", json={"models": ["a", "b"]},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )  # fmt: skip
    assert answer.status_code == 202
    assert answer.json() == {"accepted": ["a", "b"]}


def test_a_report_without_the_key_is_refused(manager: TestClient) -> None:
    answer = manager.post("/v1/scaler/pressure", json={"models": ["a"]})
    assert answer.status_code == 401


@pytest.mark.parametrize(
    ("body", "named"),
    [({"models": []}, "models"), ({}, "models"), ({"models": ["a"], "x": 1}, "x")],
)
def test_a_malformed_report_is_a_4xx_naming_the_field(
    manager: TestClient, body: dict[str, object], named: str
) -> None:
    answer = manager.post(
        "/v1/scaler/pressure", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert 400 <= answer.status_code < 500
    assert named in answer.json()["error"]["message"]
