"""Each way the store can fail gets its own OpenAI-shaped answer, never a text/plain 500.

The failures are real SQLite ones: a page count capped below what a write needs (SQLite's
``database or disk is full``), and pages overwritten with garbage (``malformed``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from api.app import Role, create_app
from api.store.sqlite import SqliteModelStore
from domain.settings import Settings
from tests.conftest import register_body
from tests.fakes import FakeDeployer


def _client(settings: Settings, store: SqliteModelStore) -> TestClient:
    # The frontend alone: no background role reads the store as it starts.
    settings = settings.model_copy(update={"chat_executor_url": "http://127.0.0.1:9"})
    app = create_app(
        settings, frozenset({Role.FRONTEND}), store=store, deployer_factory=lambda _: FakeDeployer()
    )
    return TestClient(app, raise_server_exceptions=False)


class _FullDisk(SqliteModelStore):
    """Every connection may not grow the file: SQLite answers ``database or disk is full``."""

    def cap(self) -> None:
        original = self._pool._open

        def capped() -> sqlite3.Connection:
            conn = original()
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
            return conn

        self._pool.close()
        self._pool = type(self._pool)(self.path, self.busy_timeout_s)
        self._pool._open = capped  # type: ignore[method-assign]


@pytest.fixture
def data_dir(settings: Settings) -> Path:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings.data_dir


def test_a_full_disk_is_507_saying_so(settings: Settings, data_dir: Path) -> None:
    store = _FullDisk(data_dir / "aif.db")
    store.cap()
    try:
        with _client(settings, store) as client:
            for i in range(200):
                body = register_body(name=f"model-{i}", description="x" * 900)
                answer = client.post("/v1/models", json=body)
                if answer.status_code != 201:
                    break
    finally:
        store.close()
    assert answer.status_code == 507
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["type"] == "insufficient_storage_error"
    assert "full" in error["message"]


def _corrupted(path: Path, settings: Settings) -> None:
    """A store with rows, then every page past the schema overwritten with garbage."""
    store = SqliteModelStore(path)
    with _client(settings, store) as client:
        for i in range(30):
            body = register_body(name=f"model-{i}", description="x" * 400)
            assert client.post("/v1/models", json=body).status_code == 201
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    data[2 * 4096 :] = b"\xab" * (len(data) - 2 * 4096)
    path.write_bytes(bytes(data))


def test_a_corrupt_store_is_500_naming_the_file_and_the_way_out(
    settings: Settings, data_dir: Path
) -> None:
    path = data_dir / "aif.db"
    _corrupted(path, settings)
    store = SqliteModelStore(path)
    try:
        with _client(settings, store) as client:
            answer = client.get("/v1/models")
            ready = client.get("/ready")
    finally:
        store.close()
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    message = answer.json()["error"]["message"]
    assert str(path) in message and "backup" in message and "move it away" in message
    assert ready.status_code == 500
    assert str(path) in ready.json()["error"]["message"]


@pytest.fixture
def crashing_client(settings: Settings, store: SqliteModelStore) -> Iterator[TestClient]:
    app = create_app(settings, store=store, deployer_factory=lambda _: FakeDeployer())
    router = APIRouter()

    @router.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("an unexpected bug")

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_an_unexpected_exception_is_an_openai_shaped_500_logged_once(
    crashing_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    answer = crashing_client.get("/v1/boom")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["type"] == "internal_error"
    assert "an unexpected bug" not in answer.text
    failures = [r for r in caplog.records if r.exc_info]
    assert len(failures) == 1 and "/v1/boom" in failures[0].getMessage()
