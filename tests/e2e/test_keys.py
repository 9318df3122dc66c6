"""API keys against a real ``aif serve``: the admin key from a file, an application's key with
the ``openai`` client, the audit trail, and a key made by ``aif keys create`` while it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import register_body, wait_until
from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow

ADMIN = "sk-aif-e2e-admin-0123456789abcdefghijklmnopqrstuvwxyz"


def test_keys_end_to_end(server_factory: type[Server], tmp_path: Path) -> None:
    key_file = tmp_path / "admin-key"
    key_file.write_text(ADMIN + "\n")
    server = server_factory(
        data_dir=tmp_path / "data",
        engine_args=["--startup-delay-s", "0.2"],
        env={"AIF_ADMIN_KEY_FILE": str(key_file), "AIF_KEYS_REFRESH_S": "0.2"},
    )
    server.start()
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"})
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200

    body = register_body(name="e2e-keys", max_instance=1, min_instance=1)
    model_id = admin.post("/v1/models", json=body).json()["model"]["id"]
    created = admin.post(
        "/v1/keys", json={"name": "app", "scope": "inference", "models": ["e2e-keys"]}
    ).json()
    wait_until(lambda: admin.get(f"/v1/models/{model_id}").json()["model"]["status"] == "ACTIVE")

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=created["secret"], max_retries=0)
    assert [m.id for m in client.models.list()] == ["e2e-keys"]
    answer = client.chat.completions.create(
        model="e2e-keys", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert answer.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("e2e-keys")

    # A key made on the store while the server runs works within the refresh bound.
    made = subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", "create", "ops", "--scope", "admin",
         "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ops = {"Authorization": f"Bearer {made.stdout.strip()}"}
    wait_until(lambda: httpx.get(f"{server.url}/v1/keys", headers=ops).status_code == 200)

    admin.delete(f"/v1/keys/{created['key']['id']}")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    trail = [(e["action"], e["actor"]) for e in admin.get("/v1/audit").json()["events"]]
    assert trail == [
        ("model.register", "bootstrap-admin"),
        ("key.create", "bootstrap-admin"),
        ("key.create", "cli"),
        ("key.revoke", "bootstrap-admin"),
    ]
    admin.close()
