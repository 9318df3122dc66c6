"""``aif keys`` on the store, and ``aif serve`` refusing to serve unauthenticated off loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from api.cli import app
from api.store.sqlite import SqliteModelStore
from domain.keys import hash_secret

runner = CliRunner()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What ``aif serve`` would have served with, instead of serving."""
    calls: list[dict[str, Any]] = []

    def run(server: uvicorn.Server, sockets: Any = None) -> None:
        calls.append({"host": server.config.host, "port": server.config.port})

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return calls


def test_keys_create_list_revoke_on_the_store(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    created = runner.invoke(
        app, ["keys", "create", "chat-app", "--model", "m1", "--model", "m2", "--rpm", "60", *data]
    )
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert secret.startswith("sk-aif-") and "\n" not in secret

    store = SqliteModelStore(tmp_path / "aif.db")
    try:
        [key] = store.list_keys()
        assert key.secret_hash == hash_secret(secret)
        assert (key.name, key.scope, key.models, key.rpm) == (
            "chat-app",
            "inference",
            ["m1", "m2"],
            60,
        )

        listed = runner.invoke(app, ["keys", "list", *data], env={"COLUMNS": "300"})
        assert listed.exit_code == 0 and key.id in listed.stdout and secret not in listed.stdout

        revoked = runner.invoke(app, ["keys", "revoke", key.id, *data], env={"COLUMNS": "300"})
        assert revoked.exit_code == 0, revoked.output
        assert store.list_keys()[0].revoked
        assert [(e.action, e.actor) for e in store.events()] == [
            ("key.create", "cli"), ("key.revoke", "cli"),
        ]  # fmt: skip
    finally:
        store.close()
    missing = runner.invoke(app, ["keys", "revoke", "key_nope", *data])
    assert missing.exit_code == 1 and "key_nope" in missing.stderr


def test_keys_create_refuses_a_bad_key_naming_the_field(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["keys", "create", "ops", "--scope", "root", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "scope" in result.stderr and result.stdout == ""
    assert not (tmp_path / "aif.db").exists()


def test_serve_beyond_loopback_without_a_key_refuses_to_start(
    tmp_path: Path, served: list[dict[str, Any]]
) -> None:
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "no API key" in line and "--insecure" in line and "AIF_ADMIN_KEY" in line
    assert served == []


def test_serve_beyond_loopback_starts_with_a_key_or_insecure(
    tmp_path: Path, served: list[dict[str, Any]]
) -> None:
    data = ["--data-dir", str(tmp_path)]
    with_admin = runner.invoke(
        app, ["serve", "--host", "0.0.0.0", *data], env={"AIF_ADMIN_KEY": "sk-aif-x" * 4}
    )
    insecure = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--insecure", *data])
    runner.invoke(app, ["keys", "create", "ops", "--scope", "admin", *data])
    stored_key = runner.invoke(app, ["serve", "--host", "0.0.0.0", *data])
    loopback = runner.invoke(app, ["serve", "--data-dir", str(tmp_path / "other")])
    for result in (with_admin, insecure, stored_key, loopback):
        assert result.exit_code == 0, result.output
    assert [call["host"] for call in served] == ["0.0.0.0"] * 3 + ["127.0.0.1"]


def test_production_refuses_insecure(tmp_path: Path, served: list[dict[str, Any]]) -> None:
    result = runner.invoke(
        app,
        ["serve", "--host", "0.0.0.0", "--insecure", "--data-dir", str(tmp_path)],
        env={"AIF_ENVIRONMENT": "production", "AIF_MONGODB_URL": "mongodb://127.0.0.1:9/"},
    )
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "--insecure is refused" in line and "production" in line
    assert served == []


def test_an_unreadable_admin_key_file_is_one_clear_line(
    tmp_path: Path, served: list[dict[str, Any]]
) -> None:
    missing = tmp_path / "no-such-key"
    result = runner.invoke(
        app, ["serve", "--data-dir", str(tmp_path)], env={"AIF_ADMIN_KEY_FILE": str(missing)}
    )
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "cannot start" in line and str(missing) in line
    assert served == []
