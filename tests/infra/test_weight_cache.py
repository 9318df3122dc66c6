"""The weight cache's copy script, run with bash on a temporary directory as a pod would."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infra.weight_cache import CACHE_MARKER, CACHE_SCRIPT


def run_cache_copy(source: Path, target: Path, host: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "AIF_CACHE_SOURCE": str(source),
        "AIF_CACHE_TARGET": str(target),
        "HOSTNAME": host,
    }
    return subprocess.run(
        ["bash", "-c", CACHE_SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    source = tmp_path / "obs" / "org" / "model"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "shard-1.safetensors").write_bytes(b"\0" * 4096)
    return source


def test_cache_copy_publishes_a_complete_copy_once(weights: Path, tmp_path: Path) -> None:
    target = tmp_path / "cache" / "pvc" / "org" / "model"
    assert run_cache_copy(weights, target, "pod-a").returncode == 0
    assert (target / CACHE_MARKER).is_file()
    assert (target / "sub" / "shard-1.safetensors").read_bytes() == b"\0" * 4096
    # A second pod finds the marker and copies nothing.
    (weights / "config.json").write_text('{"changed": true}')
    assert run_cache_copy(weights, target, "pod-b").returncode == 0
    assert (target / "config.json").read_text() == "{}"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_cache_copy_replaces_a_partial_copy_without_marker(weights: Path, tmp_path: Path) -> None:
    target = tmp_path / "cache" / "pvc" / "org" / "model"
    target.mkdir(parents=True)
    (target / "half-written").write_text("x")
    assert run_cache_copy(weights, target, "pod-a").returncode == 0
    assert (target / CACHE_MARKER).is_file()
    assert not (target / "half-written").exists()


def test_concurrent_cache_copies_leave_one_complete_copy(weights: Path, tmp_path: Path) -> None:
    target = tmp_path / "cache" / "pvc" / "org" / "model"
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda i: run_cache_copy(weights, target, f"pod-{i}"), range(4)))
    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    assert (target / CACHE_MARKER).is_file()
    assert (target / "sub" / "shard-1.safetensors").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]
