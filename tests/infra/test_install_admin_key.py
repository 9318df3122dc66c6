"""The install program hands the bootstrap admin key (``aif:adminKey``) to the roles serving /v1."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.test_install_program import (
    DDS_URL,
    from_config,
    install,
    local_storage,
    string_data,
)

pytestmark = pytest.mark.usefixtures("pulumi_loop")

ADMIN = "sk-aif-" + "k" * 43


def admin_env(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return [e for e in container.get("env") or [] if e["name"] == "AIF_ADMIN_KEY"]


def secrets_holding(installed: Any, name: str) -> list[dict[str, Any]]:
    return [s for s in installed.of_type("kubernetes:core/v1:Secret") if name in string_data(s)]


def test_the_admin_key_is_a_secret_given_to_the_roles_serving_or_calling_v1() -> None:
    installed = install(local_storage(admin_key=ADMIN))

    [secret] = secrets_holding(installed, "AIF_ADMIN_KEY")
    assert string_data(secret) == {"AIF_ADMIN_KEY": ADMIN}
    deployments = installed.deployments
    # The task-executor-manager takes the chat-job-executors' pressure reports (admin only).
    for role in ("frontend", "chat-job-executor", "task-executor-manager"):
        [env] = admin_env(deployments[role])
        assert "value" not in env
        reference = env["valueFrom"]["secretKeyRef"]
        assert reference == {"name": "aif-admin-key-x1y2z3", "key": "AIF_ADMIN_KEY"}
    assert admin_env(deployments["model-job-executor"]) == []


def test_without_an_admin_key_no_role_gets_one() -> None:
    installed = install(local_storage())

    assert secrets_holding(installed, "AIF_ADMIN_KEY") == []
    assert all(admin_env(d) == [] for d in installed.deployments.values())


def test_the_admin_key_is_read_from_the_stack_as_a_secret() -> None:
    values = {"enableLocalStorage": "false", "mongodbUrl": DDS_URL, "pulumiPassphrase": "p" * 32}
    secret_keys = ["aif:mongodbUrl", "aif:pulumiPassphrase", "aif:adminKey"]

    config = from_config({**values, "adminKey": ADMIN}, secret_keys)

    installed = install(config)
    [secret] = secrets_holding(installed, "AIF_ADMIN_KEY")
    assert string_data(secret) == {"AIF_ADMIN_KEY": ADMIN}


def test_a_redis_url_is_given_to_the_gateways_only() -> None:
    installed = install(local_storage(redis_url="redis://limits:6379/0"))

    for role, deployment in installed.deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        gateway = role in ("frontend", "chat-job-executor")
        assert env.get("AIF_REDIS_URL") == ("redis://limits:6379/0" if gateway else None), role
