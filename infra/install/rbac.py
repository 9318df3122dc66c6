"""Least-privilege RBAC for aif's service account: exactly what the roles touch, no more.

A Role in the models namespace manages the objects of the models' stacks and reads what
readiness is made of; a ClusterRole, named after the install namespace so that two
installations coexist, reads nodes for accelerator capacity. Which pods get an API token at
all is left to :mod:`infra.install.roles`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.install.config import InstallConfig
from infra.install.objects import meta

_READ = ["get", "list", "watch"]
_MANAGE = [*_READ, "create", "update", "patch", "delete"]


def rbac_rules() -> tuple[list[k8s.rbac.v1.PolicyRuleArgs], list[k8s.rbac.v1.PolicyRuleArgs]]:
    """(rules in the models namespace, cluster-wide rules): exactly what the roles touch.

    Managed: the objects of a model's stack (LeaderWorkerSet, Service, PodMonitor). Read: what
    readiness and failure messages are made of (pods, events, PVCs), endpoint slices for
    routing, and nodes (cluster-scoped) for accelerator capacity.
    """
    namespaced = [
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=["leaderworkerset.x-k8s.io"], resources=["leaderworkersets"], verbs=_MANAGE
        ),
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["services"], verbs=_MANAGE),
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=[""], resources=["persistentvolumeclaims", "pods", "events"], verbs=_READ
        ),
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=_READ
        ),
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=["monitoring.coreos.com"], resources=["podmonitors"], verbs=_MANAGE
        ),
    ]
    cluster = [k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["nodes"], verbs=_READ)]
    return namespaced, cluster


@dataclass(frozen=True)
class Rbac:
    role: k8s.rbac.v1.Role
    role_binding: k8s.rbac.v1.RoleBinding
    cluster_role: k8s.rbac.v1.ClusterRole
    cluster_role_binding: k8s.rbac.v1.ClusterRoleBinding


def build_rbac(
    config: InstallConfig,
    child: pulumi.ResourceOptions,
    after_ns: pulumi.ResourceOptions,
    models_opts: pulumi.ResourceOptions,
) -> Rbac:
    """The grants of the ``aif`` service account; ``models_opts`` orders after the namespaces."""
    subject = k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name="aif", namespace=config.namespace)
    namespaced, cluster = rbac_rules()
    role = k8s.rbac.v1.Role(
        "aif-models",
        metadata=meta("aif-models", config.models_namespace, "control-plane"),
        rules=namespaced,
        opts=models_opts,
    )
    role_binding = k8s.rbac.v1.RoleBinding(
        "aif-models",
        metadata=meta("aif-models", config.models_namespace, "control-plane"),
        role_ref=k8s.rbac.v1.RoleRefArgs(
            api_group="rbac.authorization.k8s.io", kind="Role", name="aif-models"
        ),
        subjects=[subject],
        opts=pulumi.ResourceOptions.merge(models_opts, pulumi.ResourceOptions(depends_on=[role])),
    )
    # Cluster-scoped and so named after the install namespace: two installations coexist.
    cluster_role_name = f"aif-{config.namespace}-nodes"
    cluster_role = k8s.rbac.v1.ClusterRole(
        "aif-nodes",
        metadata=meta(cluster_role_name, None, "control-plane"),
        rules=cluster,
        opts=child,
    )
    cluster_role_binding = k8s.rbac.v1.ClusterRoleBinding(
        "aif-nodes",
        metadata=meta(cluster_role_name, None, "control-plane"),
        role_ref=k8s.rbac.v1.RoleRefArgs(
            api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=cluster_role_name
        ),
        subjects=[subject],
        opts=pulumi.ResourceOptions.merge(
            after_ns, pulumi.ResourceOptions(depends_on=[cluster_role])
        ),
    )
    return Rbac(role, role_binding, cluster_role, cluster_role_binding)


__all__ = ["Rbac", "build_rbac", "rbac_rules"]
