"""The typed form of the ``aif:*`` stack config, and the checks that it makes a working install.

:class:`InstallConfig` is read by :meth:`InstallConfig.from_pulumi_config` and refuses, with
:class:`InstallConfigError`, a config that cannot work (no database, no passphrase in
production, several executors on one file:// state, frontends with no chat-job-executor to
forward to, more than one task-executor-manager). Turning it into objects is left to
:mod:`infra.install.installation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
from pydantic import ValidationError

from domain.settings import ClusterConfig
from infra import cluster_settings

DEFAULT_IMAGE = "aif:0.1.0"


class InstallConfigError(ValueError):
    """The ``aif:*`` config cannot make a working installation; the message says what to set."""


@dataclass(frozen=True)
class RoleReplicas:
    """Pods per role (``aif:replicas``); :class:`InstallConfig` checks they can work together."""

    frontend: int = 1
    model_job_executor: int = 1
    chat_job_executor: int = 1
    task_executor_manager: int = 1

    def of(self, role: str) -> int:
        count: int = getattr(self, role.replace("-", "_"))
        return count


@dataclass(frozen=True)
class InstallConfig:
    """What an installation is made of; field docs name the ``aif:`` config key."""

    image: str = DEFAULT_IMAGE  # aif:image
    image_pull_policy: str = "IfNotPresent"  # aif:imagePullPolicy
    namespace: str = "kube-system"  # aif:namespace, like the product
    environment: Literal["development", "production"] = "production"  # aif:environment
    replicas: RoleReplicas = field(default_factory=RoleReplicas)  # aif:replicas {frontend: 2 ...}
    enable_local_storage: bool = False  # aif:enableLocalStorage
    mongodb_url: pulumi.Input[str] | None = None  # aif:mongodbUrl (secret)
    mongodb_image: str = "mongo:7.0"  # aif:mongodbImage
    mongodb_storage_size: str = "10Gi"  # aif:mongodbStorageSize
    storage_class_name: str | None = None  # aif:storageClassName, for MongoDB and state PVCs
    pulumi_backend_url: str = ""  # aif:pulumiBackendUrl (empty: a PVC-backed file:// state)
    pulumi_passphrase: pulumi.Input[str] | None = None  # aif:pulumiPassphrase (secret)
    # The bootstrap admin API key, given to the pods that serve the API (AIF_ADMIN_KEY).
    admin_key: pulumi.Input[str] | None = None  # aif:adminKey (secret)
    backend_credentials_secret: str = ""  # aif:backendCredentialsSecret (AWS_* keys for s3://)
    state_storage_size: str = "1Gi"  # aif:stateStorageSize
    create_models_namespace: bool = True  # aif:createModelsNamespace
    log_level: str = "INFO"  # aif:logLevel
    # aif:taintFaultyNodes: a NoSchedule taint on nodes whose cards are quarantined (the
    # executor then gets `patch` on nodes).
    taint_faulty_nodes: bool = False
    # aif:prometheusUrl: a Prometheus scraping the gateways and engines (see aif:podMonitor),
    # where the task-executor-manager reads the models' load.
    prometheus_url: str = ""
    # aif:redisUrl: a Redis where the gateways count keys' limits, exact across their pods
    # (AIF_REDIS_URL); empty: counted through the database.
    redis_url: str = ""
    # What models get on this cluster: aif:modelsNamespace, aif:schedulerName, aif:engineImage
    # ... one key per ClusterConfig field (see infra.cluster_settings.install_key).
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def models_namespace(self) -> str:
        """Where the models run (``aif:modelsNamespace``)."""
        return self.cluster.namespace

    def __post_init__(self) -> None:
        problems = []
        if not self.enable_local_storage and self.mongodb_url is None:
            problems.append(
                "aif:mongodbUrl is required when aif:enableLocalStorage is false: "
                "`pulumi config set --secret aif:mongodbUrl mongodb://USER:PASSWORD@HOST:8635/`"
                " (the DDS or MongoDB address), or `pulumi config set aif:enableLocalStorage "
                "true` for a MongoDB inside the cluster"
            )
        if self.environment == "production" and self.pulumi_passphrase is None:
            problems.append(
                "aif:pulumiPassphrase is required in production: `pulumi config set --secret "
                "aif:pulumiPassphrase <a long random string>` (it encrypts the models' stacks)"
            )
        if not self.pulumi_backend_url and self.replicas.model_job_executor > 1:
            problems.append(
                "aif:pulumiBackendUrl is required for more than one model-job-executor: the "
                "default file:// state lives on one ReadWriteOnce volume"
            )
        problems.extend(_replica_problems(self.replicas))
        if problems:
            raise InstallConfigError("; ".join(problems))

    @classmethod
    def from_pulumi_config(cls, config: pulumi.Config) -> InstallConfig:
        """Read the ``aif:*`` keys; unset keys keep the defaults above."""
        given: dict[str, Any] = {}
        strings = {
            "image": "image",
            "imagePullPolicy": "image_pull_policy",
            "namespace": "namespace",
            "environment": "environment",
            "mongodbImage": "mongodb_image",
            "mongodbStorageSize": "mongodb_storage_size",
            "storageClassName": "storage_class_name",
            "pulumiBackendUrl": "pulumi_backend_url",
            "backendCredentialsSecret": "backend_credentials_secret",
            "stateStorageSize": "state_storage_size",
            "logLevel": "log_level",
            "prometheusUrl": "prometheus_url",
            "redisUrl": "redis_url",
        }
        for key, attribute in strings.items():
            value = config.get(key)
            if value is not None:
                given[attribute] = value
        flags = {
            "enableLocalStorage": "enable_local_storage",
            "createModelsNamespace": "create_models_namespace",
            "taintFaultyNodes": "taint_faulty_nodes",
        }
        for key, attribute in flags.items():
            flag = config.get_bool(key)
            if flag is not None:
                given[attribute] = flag
        for key, attribute in {
            "mongodbUrl": "mongodb_url",
            "pulumiPassphrase": "pulumi_passphrase",
            "adminKey": "admin_key",
        }.items():
            secret = config.get_secret(key)
            if secret is not None:
                given[attribute] = secret
        replicas = config.get_object("replicas")
        if replicas is not None:
            given["replicas"] = _role_replicas(replicas)
        given["cluster"] = _cluster(config)
        return cls(**given)


def _cluster(config: pulumi.Config) -> ClusterConfig:
    try:
        return cluster_settings.from_install_values(config)
    except (ValueError, ValidationError) as exc:
        keys = ", ".join(
            f"aif:{cluster_settings.install_key(n)}" for n in ClusterConfig.model_fields
        )
        raise InstallConfigError(f"invalid cluster settings ({keys}): {exc}") from exc


def _replica_problems(replicas: RoleReplicas) -> list[str]:
    problems = []
    if replicas.frontend > 0 and replicas.chat_job_executor < 1:
        problems.append(
            "aif:replicas.chatJobExecutor must be at least 1 while frontends run: the frontend "
            "forwards every inference request to the chat-job-executor Service"
        )
    if replicas.task_executor_manager > 1:
        problems.append(
            "aif:replicas.taskExecutorManager must be 0 or 1: each manager keeps its scaling "
            "state in memory and takes no lease, so two would scale the same models twice"
        )
    return problems


def _role_replicas(raw: Any) -> RoleReplicas:
    if not isinstance(raw, Mapping):
        raise InstallConfigError("aif:replicas must be an object, e.g. {frontend: 2}")
    keys = {
        "frontend": "frontend",
        "modelJobExecutor": "model_job_executor",
        "chatJobExecutor": "chat_job_executor",
        "taskExecutorManager": "task_executor_manager",
    }
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise InstallConfigError(f"aif:replicas has unknown roles {unknown}; known: {list(keys)}")
    counts = {keys[k]: int(v) for k, v in raw.items()}
    if any(count < 0 for count in counts.values()):
        raise InstallConfigError("aif:replicas must not be negative")
    return RoleReplicas(**counts)


__all__ = ["DEFAULT_IMAGE", "InstallConfig", "InstallConfigError", "RoleReplicas"]
