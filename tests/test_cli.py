"""The ``aif`` command: its commands exist, and ``aif render`` works with no cluster."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from api.cli import app
from tests.conftest import register_body

runner = CliRunner()


def test_help_lists_every_role_and_render() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "serve",
        "frontend",
        "model-job-executor",
        "chat-job-executor",
        "task-executor-manager",
        "render",
    ):
        assert command in result.output


def test_serve_takes_host_port_and_data_dir() -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--host", "--port", "--data-dir", "--chat-workers"):
        assert option in result.output


def test_chat_workers_out_of_range_are_refused_before_anything_starts() -> None:
    result = runner.invoke(app, ["serve", "--chat-workers", "0"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "chat_workers" in result.output


def test_render_from_a_file(tmp_path: Path) -> None:
    body = tmp_path / "model.json"
    body.write_text(json.dumps(register_body()))
    result = runner.invoke(app, ["render", "-f", str(body)])
    assert result.exit_code == 0, result.output
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert kinds[:2] == ["LeaderWorkerSet", "Service"]


def test_render_from_stdin() -> None:
    result = runner.invoke(
        app,
        ["render", "-f", "-"],
        input=json.dumps(register_body(name="Qwen2.5-72B-Instruct", type="Qwen2.5-72B-Instruct")),
    )
    assert result.exit_code == 0, result.output
    (lws,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "LeaderWorkerSet"]
    assert lws["metadata"]["name"].startswith("qwen2-5-72b-instruct")


def test_render_refuses_invalid_input_with_the_api_words() -> None:
    result = runner.invoke(
        app, ["render", "-f", "-"], input=json.dumps(register_body(min_instance=9))
    )
    assert result.exit_code == 2
    assert "min_instance" in result.stderr
    assert "must not be greater than max_instance" in result.stderr
    assert result.stdout == ""


def test_render_refuses_malformed_json() -> None:
    result = runner.invoke(app, ["render", "-f", "-"], input="{not json")
    assert result.exit_code == 2
    assert "invalid model" in result.stderr
