"""``aif serve`` refuses a store file that is empty, not a database or damaged, and says how to
recover; a data dir with no file yet starts a new, empty store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port


def _serve(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIF_LOG_LEVEL": "WARNING", "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(free_port()),
         "--data-dir", str(data_dir)],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "is empty"),
        (b"these are not the bytes of a database" * 100, "is not a SQLite database"),
    ],
    ids=["zero-length", "not-a-database"],
)
def test_serve_refuses_a_store_file_it_did_not_create(
    tmp_path: Path, content: bytes, says: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "aif.db").write_bytes(content)
    result = _serve(data_dir)
    assert result.returncode == 1, result.stderr
    message = " ".join(result.stderr.split())
    assert str(data_dir / "aif.db") in message and says in message
    assert "restore" in message and "backup" in message and "move it away" in message
    assert "Traceback" not in result.stderr
    # Nothing was written over the evidence.
    assert (data_dir / "aif.db").read_bytes() == content
