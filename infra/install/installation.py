"""The ``Installation`` component: every object of one aif installation, parented to it.

The namespace (unless a shared one), a service account with its RBAC
(:mod:`infra.install.rbac`), the settings as a ConfigMap and a Secret, the Pulumi state's volume
when no backend URL is given, the four role Deployments (:mod:`infra.install.roles`), the
``frontend-service`` ClusterIP Service and, with ``enableLocalStorage``, an in-cluster MongoDB
(:mod:`infra.install.mongodb`). Reading and checking the config is left to
:mod:`infra.install.config`.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.install.config import InstallConfig
from infra.install.mongodb import build_mongodb, mongodb_service_url
from infra.install.objects import after, claim_spec, labels, meta, selector
from infra.install.rbac import build_rbac
from infra.install.roles import HTTP_PORT, ROLES, STATE_CLAIM_NAME, build_deployment, settings_env

FRONTEND_SERVICE_NAME = "frontend-service"
# Namespaces the install never creates or deletes.
SHARED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})


class Installation(pulumi.ComponentResource):
    """Every object of one aif installation; children are parented to this component."""

    namespace: pulumi.Output[str]
    frontend_service_name: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    mongodb_url: pulumi.Output[str]

    def __init__(
        self, name: str, config: InstallConfig, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("aif:index:Installation", name, None, opts)
        self.config = config
        child = pulumi.ResourceOptions(parent=self)
        ns = config.namespace

        self.namespace_resource = _namespace("aif-namespace", ns, child)
        after_ns = after(child, self.namespace_resource)
        self.models_namespace_resource: k8s.core.v1.Namespace | None = None
        if config.create_models_namespace and config.models_namespace != ns:
            # Retained on delete: it holds the users' weight PVCs, which outlive aif.
            self.models_namespace_resource = _namespace(
                "aif-models-namespace",
                config.models_namespace,
                pulumi.ResourceOptions(parent=self, retain_on_delete=True),
            )

        self.service_account = k8s.core.v1.ServiceAccount(
            "aif",
            metadata=meta("aif", ns, "control-plane"),
            opts=after_ns,
        )
        models_opts = after_ns
        if self.models_namespace_resource is not None:
            models_opts = after(child, self.namespace_resource, self.models_namespace_resource)
        rbac = build_rbac(config, child, after_ns, models_opts)
        self.role = rbac.role
        self.role_binding = rbac.role_binding
        self.cluster_role = rbac.cluster_role
        self.cluster_role_binding = rbac.cluster_role_binding

        self.mongodb: k8s.apps.v1.StatefulSet | None = None
        if config.enable_local_storage:
            self.mongodb = build_mongodb(config, after_ns)
            mongodb_url: pulumi.Input[str] = mongodb_service_url(ns)
        else:
            assert config.mongodb_url is not None  # checked by InstallConfig
            mongodb_url = config.mongodb_url
        self.mongodb_url = pulumi.Output.secret(mongodb_url)

        self.config_map = k8s.core.v1.ConfigMap(
            "aif-config",
            metadata=meta(None, ns, "control-plane"),
            data=settings_env(config),
            opts=after_ns,
        )
        secret_data: dict[str, pulumi.Input[str]] = {"AIF_MONGODB_URL": self.mongodb_url}
        if config.pulumi_passphrase is not None:
            secret_data["AIF_PULUMI_PASSPHRASE"] = config.pulumi_passphrase
        self.secret = k8s.core.v1.Secret(
            "aif-secrets",
            metadata=meta(None, ns, "control-plane"),
            string_data=secret_data,
            opts=after_ns,
        )

        self.state_claim: k8s.core.v1.PersistentVolumeClaim | None = None
        if not config.pulumi_backend_url:
            # The default file:// backend keeps every model's stack state: it must survive
            # the executor's restarts.
            self.state_claim = k8s.core.v1.PersistentVolumeClaim(
                STATE_CLAIM_NAME,
                metadata=meta(STATE_CLAIM_NAME, ns, "model-job-executor"),
                spec=claim_spec(config.state_storage_size, config.storage_class_name),
                opts=after_ns,
            )

        self.deployments = {
            role.name: build_deployment(
                role,
                config,
                config_map=self.config_map,
                secret=self.secret,
                state_claim=self.state_claim,
                mongodb=self.mongodb,
                opts=after_ns,
            )
            for role in ROLES
        }

        self.frontend_service = k8s.core.v1.Service(
            "frontend-service",
            metadata=meta(FRONTEND_SERVICE_NAME, ns, "frontend"),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector=selector("frontend"),
                ports=[
                    k8s.core.v1.ServicePortArgs(
                        name="http", port=80, target_port=HTTP_PORT, protocol="TCP"
                    )
                ],
            ),
            opts=after_ns,
        )

        self.namespace = pulumi.Output.from_input(ns)
        self.frontend_service_name = self.frontend_service.metadata.apply(
            lambda m: m.name or FRONTEND_SERVICE_NAME
        )
        self.endpoint = pulumi.Output.from_input(
            f"http://{FRONTEND_SERVICE_NAME}.{ns}.svc.cluster.local"
        )
        self.register_outputs(
            {
                "namespace": self.namespace,
                "frontend_service_name": self.frontend_service_name,
                "endpoint": self.endpoint,
                "mongodb_url": self.mongodb_url,
            }
        )


def build_install(
    config: InstallConfig, opts: pulumi.ResourceOptions | None = None
) -> Installation:
    """The whole installation, as one component named ``aif``."""
    return Installation("aif", config, opts)


def _namespace(
    resource_name: str, name: str, opts: pulumi.ResourceOptions
) -> k8s.core.v1.Namespace | None:
    if name in SHARED_NAMESPACES:
        return None
    return k8s.core.v1.Namespace(
        resource_name,
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, labels=labels("namespace")),
        opts=opts,
    )


__all__ = ["FRONTEND_SERVICE_NAME", "SHARED_NAMESPACES", "Installation", "build_install"]
