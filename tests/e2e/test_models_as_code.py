"""``aif apply``, ``aif diff`` and ``aif models``, run as a user runs them: subprocesses against
a real ``aif serve`` (engines are simulator processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import register_body
from tests.e2e.conftest import Server

SELECTOR = "team=search"


def aif(server: Server, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIF_URL": server.url}
    env.pop("AIF_API_KEY", None)
    if key is not None:
        env["AIF_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def model_doc(name: str, **overrides: Any) -> dict[str, Any]:
    body = register_body(name=name, min_instance=1, max_instance=2)
    body.update(overrides)
    return body


def write(path: Path, *documents: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    return path


def models(server: Server) -> dict[str, dict[str, Any]]:
    listed = httpx.get(f"{server.url}/v1/models").json()["models"]
    return {m["name"]: m for m in listed}


def events_of(server: Server, name: str) -> list[str]:
    events = httpx.get(f"{server.url}/v1/models/{name}/events").json()["events"]
    return [e["action"] for e in events]


def test_apply_creates_then_is_unchanged_then_updates_only_what_changed(
    server: Server, tmp_path: Path
) -> None:
    files = tmp_path / "models"
    files.mkdir()
    write(files / "search.yaml", model_doc("alpha"), model_doc("beta"))

    created = aif(server, "apply", "-f", str(files), "-l", SELECTOR, "--wait", "--timeout", "60")
    assert created.returncode == 0, created.stderr
    assert "alpha: created" in created.stdout and "beta: created" in created.stdout
    assert "alpha: ACTIVE (1/1 ready)" in created.stdout
    assert {n: m["labels"] for n, m in models(server).items()} == {
        "alpha": {"team": "search"},
        "beta": {"team": "search"},
    }
    before = {n: m["resource_version"] for n, m in models(server).items()}

    again = aif(server, "apply", "-f", str(files), "-l", SELECTOR)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["alpha: unchanged", "beta: unchanged"]
    assert {n: m["resource_version"] for n, m in models(server).items()} == before
    assert events_of(server, "alpha") == ["model.register"]

    write(files / "search.yaml", model_doc("alpha", max_instance=3), model_doc("beta"))
    edited = aif(server, "apply", "-f", str(files), "-l", SELECTOR)
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.splitlines() == ["alpha: update max_instance", "beta: unchanged"]
    after = models(server)
    assert after["alpha"]["max_instance"] == 3 and after["beta"]["max_instance"] == 2
    assert events_of(server, "beta") == ["model.register"]
    update = httpx.get(f"{server.url}/v1/models/alpha/events").json()["events"][-1]
    assert set(update["changes"]) == {"max_instance"}


def test_prune_deletes_only_the_managed_models_no_longer_listed(
    server: Server, tmp_path: Path
) -> None:
    by_hand = httpx.post(f"{server.url}/v1/models", json=model_doc("by-hand"))
    assert by_hand.status_code == 201
    other_team = model_doc("ads", labels={"team": "ads"})
    assert httpx.post(f"{server.url}/v1/models", json=other_team).status_code == 201
    files = write(tmp_path / "m.yaml", model_doc("alpha"), model_doc("beta"))
    assert aif(server, "apply", "-f", str(files), "-l", SELECTOR).returncode == 0

    write(files, model_doc("alpha"))
    dry = aif(server, "apply", "-f", str(files), "-l", SELECTOR, "--prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "beta: deleted (dry run)" in dry.stdout
    assert models(server)["beta"]["status"] != "DELETING"

    pruned = aif(server, "apply", "-f", str(files), "-l", SELECTOR, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines() == ["alpha: unchanged", "beta: deleted"]
    left = models(server)
    assert left.get("beta", {"status": "DELETING"})["status"] == "DELETING"
    assert {"alpha", "by-hand", "ads"} <= set(left)
    assert all(left[n]["status"] != "DELETING" for n in ("alpha", "by-hand", "ads"))

    unscoped = aif(server, "apply", "-f", str(files), "--prune")
    assert unscoped.returncode == 2 and "--prune needs --selector" in unscoped.stderr


def test_diff_exits_0_when_equal_1_when_not_and_2_on_error(server: Server, tmp_path: Path) -> None:
    files = write(tmp_path / "m.yaml", model_doc("alpha"))
    would_create = aif(server, "diff", "-f", str(files))
    assert would_create.returncode == 1
    assert "+++ file/alpha" in would_create.stdout and "+max_instance: 2" in would_create.stdout
    assert models(server) == {}, "diff changes nothing"

    assert aif(server, "apply", "-f", str(files)).returncode == 0
    same = aif(server, "diff", "-f", str(files))
    assert (same.returncode, same.stdout) == (0, "")

    write(files, model_doc("alpha", description="reasoning"))
    changed = aif(server, "diff", "-f", str(files))
    assert changed.returncode == 1
    assert "-description: This is model description." in changed.stdout
    assert "+description: reasoning" in changed.stdout

    (tmp_path / "bad.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    broken = aif(server, "diff", "-f", str(tmp_path / "bad.yaml"))
    assert broken.returncode == 2 and "not YAML" in broken.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "api.cli", "diff", "-f", str(files), "--url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unreachable.returncode == 2 and "cannot reach aif" in unreachable.stderr


@pytest.mark.parametrize(
    ("documents", "named"),
    [
        ([model_doc("alpha"), model_doc("beta", replicas=3)], "replicas: Extra inputs"),
        ([model_doc("alpha"), model_doc("beta", max_instance="two")], "max_instance"),
        ([model_doc("alpha"), model_doc("alpha")], "'alpha' is also defined in"),
    ],
    ids=["unknown-field", "wrong-type", "duplicate-name"],
)
def test_a_bad_document_is_refused_before_any_request(
    server: Server, tmp_path: Path, documents: list[dict[str, Any]], named: str
) -> None:
    files = write(tmp_path / "m.yaml", *documents)
    refused = aif(server, "apply", "-f", str(files))
    assert refused.returncode == 1
    assert f"{files}#2" in refused.stderr and named in refused.stderr
    assert models(server) == {}, "nothing is created when any document is invalid"


def test_a_file_that_is_not_yaml_is_named_and_nothing_changes(
    server: Server, tmp_path: Path
) -> None:
    files = tmp_path / "models"
    files.mkdir()
    write(files / "a.yaml", model_doc("alpha"))
    (files / "b.yaml").write_text("name: beta\n  type: : x\n", encoding="utf-8")
    refused = aif(server, "apply", "-f", str(files))
    assert refused.returncode == 1
    assert str(files / "b.yaml") in refused.stderr and "not YAML" in refused.stderr
    assert models(server) == {}


def test_wait_fails_on_a_model_that_goes_failed_with_its_status_message(
    server_factory: type[Server], tmp_path: Path
) -> None:
    # An engine that cannot start: the simulator refuses an argument it does not know.
    server = server_factory(
        data_dir=tmp_path / "data",
        engine_args=["--no-such-option"],
        env={"AIF_MAX_ATTEMPTS": "1"},
    )
    server.start()
    files = write(tmp_path / "m.yaml", model_doc("alpha"))
    result = aif(server, "apply", "-f", str(files), "--wait", "--timeout", "60")
    assert result.returncode == 1
    failed = models(server)["alpha"]
    assert failed["status"] == "FAILED"
    assert f"alpha FAILED: {failed['status_msg']}" in result.stderr


def test_models_commands_and_a_stale_if_match(server: Server, tmp_path: Path) -> None:
    assert (
        aif(server, "apply", "-f", str(write(tmp_path / "m.yaml", model_doc("alpha")))).returncode
        == 0
    )
    listed = aif(server, "models", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [m["name"] for m in yaml.safe_load(listed.stdout)["models"]] == ["alpha"]
    got = yaml.safe_load(aif(server, "models", "get", "alpha", "-o", "yaml").stdout)["model"]
    assert got["resource_version"] == "1"

    scaled = aif(server, "models", "scale", "alpha", "--max", "4", "-o", "json")
    assert scaled.returncode == 0, scaled.stderr
    assert yaml.safe_load(scaled.stdout)["model"]["resource_version"] == "2"
    events = aif(server, "models", "events", "alpha", "-o", "json")
    assert [e["action"] for e in yaml.safe_load(events.stdout)["events"]] == [
        "model.register", "model.update",
    ]  # fmt: skip

    stale = aif(server, "models", "delete", "alpha", "--if-match", "1")
    assert stale.returncode == 1
    assert "resource_version 2" in stale.stderr and len(stale.stderr.strip().splitlines()) == 1
    assert models(server)["alpha"]["status"] != "DELETING"
    missing = aif(server, "models", "get", "nope")
    assert missing.returncode == 1 and "model 'nope' not found" in missing.stderr
    assert aif(server, "models", "delete", "alpha", "--if-match", "2").returncode == 0


def test_a_missing_or_refused_key_says_which(server_factory: type[Server], tmp_path: Path) -> None:
    key = "sk-aif-ci-" + "0" * 32
    server = server_factory(data_dir=tmp_path / "data", env={"AIF_ADMIN_KEY": key})
    server.start()
    missing = aif(server, "models", "list")
    assert missing.returncode == 1 and "no API key given" in missing.stderr
    refused = aif(server, "models", "list", key="sk-aif-wrong")
    assert refused.returncode == 1 and "the API key was refused" in refused.stderr
    (tmp_path / "key").write_text(key + "\n", encoding="utf-8")
    from_file = aif(server, "models", "list", "--api-key-file", str(tmp_path / "key"))
    assert from_file.returncode == 0, from_file.stderr
    assert aif(server, "models", "list", key=key).returncode == 0


def test_accelerators_shows_the_inventory_and_quarantines_and_releases_a_card(
    server_factory: type[Server], tmp_path: Path
) -> None:
    server = server_factory(
        data_dir=tmp_path / "data",
        engine_args=["--startup-delay-s", "0.2"],
        env={"AIF_LOCAL_ACCELERATORS": '{"node-a": 2, "node-b": 2}'},
    )
    server.start()
    inventory = yaml.safe_load(aif(server, "accelerators", "-o", "json").stdout)
    assert [n["node"] for n in inventory["nodes"]] == ["node-a", "node-b"]
    assert len(inventory["cards"]) == 4

    out = aif(server, "accelerators", "quarantine", "node-b", "1", "--reason", "ECC errors")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "node-b/1: quarantined"
    table = aif(server, "accelerators")
    assert table.returncode == 0, table.stderr
    assert "node-b/1" in table.stdout and "ECC errors" in table.stdout
    card = next(
        c
        for c in httpx.get(f"{server.url}/v1/accelerators").json()["cards"]
        if (c["node"], c["index"]) == ("node-b", 1)
    )
    assert card["state"] == "quarantined"

    released = aif(server, "accelerators", "release", "node-b", "1")
    assert released.returncode == 0 and released.stdout.strip() == "node-b/1: released"
    again = aif(server, "accelerators", "release", "node-b", "1")
    assert again.stdout.strip() == "node-b/1: was not quarantined"
    unknown = aif(server, "accelerators", "quarantine", "node-c", "0", "--reason", "x")
    assert unknown.returncode == 1 and "node-c" in unknown.stderr
