"""The ``Installation`` component: every object of one aif installation, parented to it.

The namespaces (unless shared ones), the service accounts and the executor's RBAC
(:mod:`infra.install.rbac`), the settings as a ConfigMap and a Secret (and the bootstrap admin
API key, ``aif:adminKey``, in a Secret of its own for the roles serving /v1), the Pulumi
state's volume when no backend URL is given, the four role Deployments
(:mod:`infra.install.roles`), the ``frontend-service`` and ``chat-job-executor`` ClusterIP Services
(:mod:`infra.install.services`) and, with ``enableLocalStorage``, an in-cluster MongoDB
(:mod:`infra.install.mongodb`). Reading and checking the config is left to
:mod:`infra.install.config`.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.install.config import InstallConfig
from infra.install.mongodb import build_mongodb, mongodb_service_url
from infra.install.objects import after, claim_spec, labels, meta
from infra.install.rbac import build_rbac
from infra.install.roles import (
    ADMIN_KEY_ENV,
    ROLES,
    STATE_CLAIM_NAME,
    RoleInputs,
    build_deployment,
    settings_env,
)
from infra.install.services import (
    FRONTEND_SERVICE_NAME,
    build_services,
    chat_executor_url,
    frontend_endpoint,
)

# Namespaces the install never creates or deletes.
SHARED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})


class Installation(pulumi.ComponentResource):
    """Every object of one aif installation; children are parented to this component."""

    namespace: pulumi.Output[str]
    frontend_service_name: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    chat_executor_url: pulumi.Output[str]
    mongodb_url: pulumi.Output[str]

    def __init__(
        self, name: str, config: InstallConfig, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("aif:index:Installation", name, None, opts)
        self.config = config
        after_ns, models_opts = self._namespaces()
        self.rbac = build_rbac(config, after_ns, models_opts)
        self.mongodb_url = self._database(after_ns)
        self.config_map, self.secret = self._settings(after_ns)
        self.state_claim = self._state_claim(after_ns)
        self.admin_key_secret = self._admin_key(after_ns)
        inputs = RoleInputs(
            self.config_map, self.secret, self.state_claim, self.mongodb, self.admin_key_secret
        )
        # Pods of a role name their account: start them once the accounts exist.
        roles_opts = after(
            after_ns,
            self.rbac.service_account,
            self.rbac.executor_service_account,
            self.rbac.frontend_service_account,
        )
        self.deployments = {
            role.name: build_deployment(role, config, inputs, roles_opts) for role in ROLES
        }
        self.services = build_services(config.namespace, after_ns)
        self.frontend_service = self.services.frontend
        self._export_outputs()

    def _namespaces(self) -> tuple[pulumi.ResourceOptions, pulumi.ResourceOptions]:
        """Creates the namespaces; returns options ordering after the install namespace, and
        after both namespaces."""
        child = pulumi.ResourceOptions(parent=self)
        config = self.config
        self.namespace_resource = _namespace("aif-namespace", config.namespace, child)
        self.models_namespace_resource: k8s.core.v1.Namespace | None = None
        if config.create_models_namespace and config.models_namespace != config.namespace:
            # Retained on delete: it holds the users' weight PVCs, which outlive aif.
            self.models_namespace_resource = _namespace(
                "aif-models-namespace",
                config.models_namespace,
                pulumi.ResourceOptions(parent=self, retain_on_delete=True),
            )
        after_ns = after(child, self.namespace_resource)
        return after_ns, after(child, self.namespace_resource, self.models_namespace_resource)

    def _database(self, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """The store's URL, secret: the in-cluster MongoDB's, or the configured one."""
        self.mongodb: k8s.apps.v1.StatefulSet | None = None
        if self.config.enable_local_storage:
            self.mongodb = build_mongodb(self.config, opts)
            return pulumi.Output.secret(mongodb_service_url(self.config.namespace))
        assert self.config.mongodb_url is not None  # checked by InstallConfig
        return pulumi.Output.secret(self.config.mongodb_url)

    def _settings(
        self, opts: pulumi.ResourceOptions
    ) -> tuple[k8s.core.v1.ConfigMap, k8s.core.v1.Secret]:
        """The roles' settings: plain ones in a ConfigMap, the rest in a Secret."""
        ns = self.config.namespace
        config_map = k8s.core.v1.ConfigMap(
            "aif-config",
            metadata=meta(None, ns, "control-plane"),
            data=settings_env(self.config),
            opts=opts,
        )
        secret_data: dict[str, pulumi.Input[str]] = {"AIF_MONGODB_URL": self.mongodb_url}
        if self.config.pulumi_passphrase is not None:
            secret_data["AIF_PULUMI_PASSPHRASE"] = self.config.pulumi_passphrase
        secret = k8s.core.v1.Secret(
            "aif-secrets",
            metadata=meta(None, ns, "control-plane"),
            string_data=secret_data,
            opts=opts,
        )
        return config_map, secret

    def _admin_key(self, opts: pulumi.ResourceOptions) -> k8s.core.v1.Secret | None:
        """The bootstrap admin API key in a Secret of its own, for the roles serving /v1 only."""
        if self.config.admin_key is None:
            if self.config.environment == "production":
                pulumi.log.warn(
                    "no aif:adminKey: /v1 is open to anyone who reaches the frontend until a key "
                    "is created (`pulumi config set --secret aif:adminKey sk-...`, or `aif keys "
                    "create` against the store)"
                )
            return None
        return k8s.core.v1.Secret(
            "aif-admin-key",
            metadata=meta(None, self.config.namespace, "control-plane"),
            string_data={ADMIN_KEY_ENV: pulumi.Output.secret(self.config.admin_key)},
            opts=opts,
        )

    def _state_claim(
        self, opts: pulumi.ResourceOptions
    ) -> k8s.core.v1.PersistentVolumeClaim | None:
        if self.config.pulumi_backend_url:
            return None
        # The default file:// backend keeps every model's stack state: it must survive the
        # executor's restarts.
        return k8s.core.v1.PersistentVolumeClaim(
            STATE_CLAIM_NAME,
            metadata=meta(STATE_CLAIM_NAME, self.config.namespace, "model-job-executor"),
            spec=claim_spec(self.config.state_storage_size, self.config.storage_class_name),
            opts=opts,
        )

    def _export_outputs(self) -> None:
        ns = self.config.namespace
        self.namespace = pulumi.Output.from_input(ns)
        self.frontend_service_name = self.frontend_service.metadata.apply(
            lambda m: m.name or FRONTEND_SERVICE_NAME
        )
        self.endpoint = pulumi.Output.from_input(frontend_endpoint(ns))
        self.chat_executor_url = pulumi.Output.from_input(chat_executor_url(ns))
        self.register_outputs(
            {
                "namespace": self.namespace,
                "frontend_service_name": self.frontend_service_name,
                "endpoint": self.endpoint,
                "chat_executor_url": self.chat_executor_url,
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
