"""Keys' limits across ``aif serve --chat-workers 2``: counted once across both processes,
through Redis and through the store, and Redis killed mid-run answered with no 5xx."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisServer, register_body, wait_until
from tests.e2e.conftest import Server
from tests.e2e.test_chat_workers import FIXED_PACE, _workers

pytestmark = pytest.mark.slow

ADMIN = "sk-aif-e2e-admin-0123456789abcdefghijklmnopqrstuvwxyz"


def _serve(
    server_factory: type[Server], tmp_path: Path, env: dict[str, str]
) -> tuple[Server, str, str]:
    """Two chat processes, one model, and an inference key at 10 requests a minute (its
    secret), made before the server starts so that both processes know it from the first."""
    data_dir = tmp_path / "data"
    made = subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", "create", "app", "--rpm", "10",
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    server = server_factory(
        data_dir=data_dir,
        engine_args=FIXED_PACE,
        env={"AIF_CHAT_WORKERS": "2", "AIF_ADMIN_KEY": ADMIN, **env},
    )
    server.start()
    wait_until(lambda: len(_workers(server)) == 1)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    name = f"l-{uuid.uuid4().hex[:8]}"
    body = register_body(name=name, min_instance=1, max_instance=1)
    model_id = httpx.post(f"{server.url}/v1/models", json=body, headers=admin).json()["model"]["id"]
    wait_until(
        lambda: (
            httpx.get(f"{server.url}/v1/models/{model_id}", headers=admin).json()["model"]["status"]
            == "ACTIVE"
        )
    )
    return server, name, made.stdout.strip()


def _chat(url: str, name: str, secret: str) -> httpx.Response:
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    # A connection of its own each time: either process may accept it.
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


def _codes(server: Server, name: str, secret: str, count: int, gap_s: float = 0.0) -> list[int]:
    codes = []
    for _ in range(count):
        codes.append(_chat(server.url, name, secret).status_code)
        # Pacing, not timing: with the store, each process must have synced before the next.
        time.sleep(gap_s)
    return codes


def test_two_processes_admit_rpm_through_redis(
    server_factory: type[Server], tmp_path: Path, redis_server: RedisServer
) -> None:
    server, name, secret = _serve(server_factory, tmp_path, {"AIF_REDIS_URL": redis_server.url})
    codes = _codes(server, name, secret, 30)
    assert codes.count(200) == 10 and codes.count(429) == 20


def test_two_processes_admit_rpm_through_the_store(
    server_factory: type[Server], tmp_path: Path
) -> None:
    server, name, secret = _serve(server_factory, tmp_path, {"AIF_LIMITS_SYNC_S": "0.05"})
    codes = _codes(server, name, secret, 30, gap_s=0.3)
    assert codes.count(200) == 10 and codes.count(429) == 20


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_killed_mid_run_is_never_a_5xx(
    server_factory: type[Server], tmp_path: Path, redis_server: RedisServer, mode: str
) -> None:
    env = {"AIF_REDIS_URL": redis_server.url, "AIF_LIMITS_UNREACHABLE": mode}
    server, name, secret = _serve(server_factory, tmp_path, env)
    before = _codes(server, name, secret, 4)
    redis_server.kill()
    answers = [_chat(server.url, name, secret) for _ in range(30)]

    assert before == [200] * 4
    codes = [answer.status_code for answer in answers]
    assert all(code in (200, 429) for code in codes), codes
    if mode == "closed":
        assert codes == [429] * 30
        assert "cannot be checked" in answers[0].json()["error"]["message"]
    else:
        # Each process counts on its own: at most 10 each, more than Redis would have let by.
        assert 6 < codes.count(200) <= 20
    log = (tmp_path / f"aif-{server.port}.log").read_text()
    assert "limits: the shared counter (redis) cannot be reached" in log
