"""``aif keys update``, the budget options of ``aif keys create``, and ``aif usage``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from api.cli import app
from api.store.sqlite import SqliteModelStore
from domain.usage import UsageBucket, hour_of

runner = CliRunner()
WIDE = {"COLUMNS": "300"}


def test_keys_create_with_a_budget_then_update_its_limits(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    created = runner.invoke(
        app,
        ["keys", "create", "team-a", "--budget", "100000", "--period", "day", "--weight", "2",
         "--priority", "batch", *data],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    store = SqliteModelStore(tmp_path / "aif.db")
    try:
        [key] = store.list_keys()
        assert (key.token_budget, key.budget_period, key.weight, key.priority) == (
            100_000, "day", 2.0, "batch",
        )  # fmt: skip
        listed = runner.invoke(app, ["keys", "list", *data], env=WIDE)
        assert "100,000/day" in listed.stdout

        updated = runner.invoke(
            app, ["keys", "update", key.id, "--rpm", "30", "--model", "m1", *data], env=WIDE
        )
        assert updated.exit_code == 0, updated.output
        [key] = store.list_keys()
        assert (key.rpm, key.models, key.token_budget) == (30, ["m1"], 100_000)
        assert [e.action for e in store.events()] == ["key.create", "key.update"]

        bad = runner.invoke(app, ["keys", "update", key.id, "--period", "week", *data])
        assert bad.exit_code == 2 and "budget_period" in bad.output
        missing = runner.invoke(app, ["keys", "update", "key_nope", "--rpm", "5", *data])
        assert missing.exit_code == 1 and "key_nope" in missing.output
        assert store.list_keys() == [key]
    finally:
        store.close()


def test_usage_prints_a_table_or_json(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    store = SqliteModelStore(tmp_path / "aif.db")
    hour = hour_of(datetime.now(UTC))
    try:
        store.add_usage(
            [
                UsageBucket(key_id="key_a", model="m1", hour=hour, requests=2, prompt_tokens=6,
                            completion_tokens=8),
                UsageBucket(key_id="key_b", model="m1", hour=hour, requests=1, prompt_tokens=1000,
                            completion_tokens=1),
            ]
        )  # fmt: skip
    finally:
        store.close()

    table = runner.invoke(app, ["usage", *data], env=WIDE)
    assert table.exit_code == 0, table.output
    assert "key_a" in table.stdout and "1,001" in table.stdout and "total" in table.stdout

    answer = runner.invoke(
        app, ["usage", "--key", "key_a", "--group-by", "model,hour", "-o", "json", *data]
    )
    assert answer.exit_code == 0, answer.output
    report = json.loads(answer.stdout)
    assert report["group_by"] == ["model", "hour"]
    assert [(r["model"], r["requests"], r["total_tokens"]) for r in report["data"]] == [
        ("m1", 2, 14)
    ]

    bad = runner.invoke(app, ["usage", "--from", "last week", *data])
    assert bad.exit_code == 2 and "from" in bad.output
