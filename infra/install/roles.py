"""The four roles of aif, each one Deployment of the same image running ``aif <role>``.

:data:`ROLES` says what each role needs (an API token, the Pulumi state, its resources);
:func:`settings_env` is the non-secret ``AIF_*`` settings they all read; :func:`build_deployment`
makes a role's Deployment from them: non-root, no privilege escalation, health probes, the
settings from a ConfigMap and a Secret. Those two objects, the state volume and the Service in
front of the frontend are left to :mod:`infra.install.installation`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.install.config import InstallConfig
from infra.install.objects import labels, meta, selector

HTTP_PORT = 8080
DATA_DIR = "/var/lib/aif"
# The uid the image's ``aif`` user has (see the Dockerfile); pods refuse to run as root.
AIF_UID = 10001
# The claim of the default file:// Pulumi state, which the model-job-executor mounts.
STATE_CLAIM_NAME = "aif-pulumi-state"


@dataclass(frozen=True)
class RoleSpec:
    """One of the four roles: one Deployment running ``aif <name>``."""

    name: str
    # Roles that read the cluster get an API token; the frontend never talks to the API.
    uses_cluster_api: bool
    # The model-job-executor runs the Pulumi CLI: stack state, backend credentials.
    drives_models: bool
    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str


# The executor's limits leave room for the Pulumi CLI and the kubernetes plugin it spawns.
ROLES: tuple[RoleSpec, ...] = (
    RoleSpec("frontend", False, False, "100m", "256Mi", "1", "1Gi"),
    RoleSpec("model-job-executor", True, True, "250m", "512Mi", "2", "2Gi"),
    RoleSpec("chat-job-executor", True, False, "250m", "256Mi", "2", "1Gi"),
    RoleSpec("task-executor-manager", True, False, "100m", "256Mi", "1", "512Mi"),
)


def settings_env(config: InstallConfig) -> dict[str, str]:
    """The non-secret ``AIF_*`` settings every role reads (see :mod:`domain.settings`)."""
    env = {
        "AIF_ENVIRONMENT": config.environment,
        "AIF_HOST": "0.0.0.0",
        "AIF_PORT": str(HTTP_PORT),
        "AIF_DATA_DIR": DATA_DIR,
        "AIF_LOG_LEVEL": config.log_level,
        "AIF_RUNTIME": "kubernetes",
        "AIF_NAMESPACE": config.models_namespace,
        "AIF_SCHEDULER_NAME": config.scheduler_name,
        "AIF_VOLCANO_QUEUE": config.volcano_queue,
        "AIF_ENGINE_IMAGE": config.engine_image,
        "AIF_POD_MONITOR": "true" if config.pod_monitor else "false",
    }
    if config.pulumi_backend_url:
        env["AIF_PULUMI_BACKEND_URL"] = config.pulumi_backend_url
    return env


def build_deployment(
    role: RoleSpec,
    config: InstallConfig,
    *,
    config_map: k8s.core.v1.ConfigMap,
    secret: k8s.core.v1.Secret,
    state_claim: k8s.core.v1.PersistentVolumeClaim | None,
    mongodb: k8s.apps.v1.StatefulSet | None,
    opts: pulumi.ResourceOptions,
) -> k8s.apps.v1.Deployment:
    """The Deployment running ``aif <role>``, started after its settings (and MongoDB)."""
    env_from = [
        k8s.core.v1.EnvFromSourceArgs(
            config_map_ref=k8s.core.v1.ConfigMapEnvSourceArgs(
                name=config_map.metadata.apply(lambda m: m.name or "")
            )
        ),
        k8s.core.v1.EnvFromSourceArgs(
            secret_ref=k8s.core.v1.SecretEnvSourceArgs(
                name=secret.metadata.apply(lambda m: m.name or "")
            )
        ),
    ]
    data_volume = k8s.core.v1.VolumeArgs(
        name="data", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs()
    )
    if role.drives_models:
        if config.backend_credentials_secret:
            env_from.append(
                k8s.core.v1.EnvFromSourceArgs(
                    secret_ref=k8s.core.v1.SecretEnvSourceArgs(
                        name=config.backend_credentials_secret
                    )
                )
            )
        if state_claim is not None:
            data_volume = k8s.core.v1.VolumeArgs(
                name="data",
                persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                    claim_name=STATE_CLAIM_NAME
                ),
            )
    probe = k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path="/health", port="http"),
        period_seconds=10,
        timeout_seconds=3,
        failure_threshold=3,
    )
    container = k8s.core.v1.ContainerArgs(
        name=role.name,
        image=config.image,
        image_pull_policy=config.image_pull_policy,
        command=["aif", role.name],
        env_from=env_from,
        ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=HTTP_PORT)],
        readiness_probe=probe,
        liveness_probe=k8s.core.v1.ProbeArgs(
            http_get=k8s.core.v1.HTTPGetActionArgs(path="/health", port="http"),
            period_seconds=20,
            timeout_seconds=3,
            failure_threshold=3,
        ),
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": role.cpu_request, "memory": role.memory_request},
            limits={"cpu": role.cpu_limit, "memory": role.memory_limit},
        ),
        volume_mounts=[k8s.core.v1.VolumeMountArgs(name="data", mount_path=DATA_DIR)],
        security_context=k8s.core.v1.SecurityContextArgs(
            allow_privilege_escalation=False,
            capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        ),
    )
    depends: list[pulumi.Resource] = [config_map, secret]
    if mongodb is not None:
        depends.append(mongodb)
    return k8s.apps.v1.Deployment(
        role.name,
        metadata=meta(role.name, config.namespace, role.name),
        spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=config.replicas.of(role.name),
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector(role.name)),
            # One executor at a time drives the stacks: no overlap during a rollout.
            strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate")
            if role.drives_models
            else None,
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels(role.name)),
                spec=k8s.core.v1.PodSpecArgs(
                    service_account_name="aif",
                    # Only roles that read the cluster get an API token.
                    automount_service_account_token=role.uses_cluster_api,
                    security_context=k8s.core.v1.PodSecurityContextArgs(
                        run_as_non_root=True,
                        run_as_user=AIF_UID,
                        fs_group=AIF_UID,
                    ),
                    containers=[container],
                    volumes=[data_volume],
                ),
            ),
        ),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=depends)),
    )


__all__ = [
    "AIF_UID",
    "DATA_DIR",
    "HTTP_PORT",
    "ROLES",
    "STATE_CLAIM_NAME",
    "RoleSpec",
    "build_deployment",
    "settings_env",
]
