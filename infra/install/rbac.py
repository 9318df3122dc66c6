"""Least-privilege RBAC: one service account with grants, for the one role that calls the API.

Only the model-job-executor talks to the Kubernetes API: it runs ``pulumi up`` on each model's
stack (LeaderWorkerSet, Service, PodMonitor) and reads what readiness and failure messages are
made of (:mod:`infra.cluster_observer`: the LWS, pods, events, the weights' PVC). So its
service account, :data:`EXECUTOR_SERVICE_ACCOUNT`, is bound to one Role in the models namespace
and, in the control plane's own namespace, to :data:`PEERS_ROLE`: ``get`` on pods, so that a
stack lock left by an executor pod that no longer exists is cancelled at once (the lock names
its holder's pod). The other roles run as :data:`SERVICE_ACCOUNT`, which has no grants and no
token. Nothing reads nodes or endpoint slices, so nothing is granted on them (no ClusterRole at
all). Which pods mount a token is left to :mod:`infra.install.roles`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.install.config import InstallConfig
from infra.install.objects import meta

# The account of the roles that never call the API: no grants, no token.
SERVICE_ACCOUNT = "aif"
# The model-job-executor's own account, the only one bound to anything.
EXECUTOR_SERVICE_ACCOUNT = "aif-model-job-executor"
MODELS_ROLE = "aif-models"
# In the control plane's namespace: whether the executor pod holding a stack lock still exists.
PEERS_ROLE = "aif-executor-peers"

_READ = ["get", "list", "watch"]
_MANAGE = [*_READ, "create", "update", "patch", "delete"]


def rbac_rules() -> list[k8s.rbac.v1.PolicyRuleArgs]:
    """The model-job-executor's rules in the models namespace: exactly what it touches.

    Managed: the objects of a model's stack (LeaderWorkerSet, Service, PodMonitor). Read: what
    readiness and failure messages are made of (pods, events, PVCs).
    """
    return [
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=["leaderworkerset.x-k8s.io"], resources=["leaderworkersets"], verbs=_MANAGE
        ),
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["services"], verbs=_MANAGE),
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=[""], resources=["persistentvolumeclaims", "pods", "events"], verbs=_READ
        ),
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=["monitoring.coreos.com"], resources=["podmonitors"], verbs=_MANAGE
        ),
    ]


@dataclass(frozen=True)
class Rbac:
    service_account: k8s.core.v1.ServiceAccount
    executor_service_account: k8s.core.v1.ServiceAccount
    role: k8s.rbac.v1.Role
    role_binding: k8s.rbac.v1.RoleBinding
    peers_role: k8s.rbac.v1.Role
    peers_binding: k8s.rbac.v1.RoleBinding


def build_rbac(
    config: InstallConfig,
    after_ns: pulumi.ResourceOptions,
    models_opts: pulumi.ResourceOptions,
) -> Rbac:
    """Both service accounts and the executor's grants; ``models_opts`` orders after both
    namespaces, ``after_ns`` after the install namespace."""
    service_account = k8s.core.v1.ServiceAccount(
        SERVICE_ACCOUNT,
        metadata=meta(SERVICE_ACCOUNT, config.namespace, "control-plane"),
        # Even a pod that asks for one gets no token of this account by default.
        automount_service_account_token=False,
        opts=after_ns,
    )
    executor_account = k8s.core.v1.ServiceAccount(
        EXECUTOR_SERVICE_ACCOUNT,
        metadata=meta(EXECUTOR_SERVICE_ACCOUNT, config.namespace, "model-job-executor"),
        opts=after_ns,
    )
    role, role_binding = _bound_role(
        MODELS_ROLE, config.models_namespace, rbac_rules(), config, executor_account, models_opts
    )
    peers = [k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods"], verbs=["get"])]
    peers_role, peers_binding = _bound_role(
        PEERS_ROLE, config.namespace, peers, config, executor_account, after_ns
    )
    return Rbac(service_account, executor_account, role, role_binding, peers_role, peers_binding)


def _bound_role(
    name: str,
    namespace: str,
    rules: list[k8s.rbac.v1.PolicyRuleArgs],
    config: InstallConfig,
    executor_account: k8s.core.v1.ServiceAccount,
    opts: pulumi.ResourceOptions,
) -> tuple[k8s.rbac.v1.Role, k8s.rbac.v1.RoleBinding]:
    """A Role in ``namespace`` and its binding to the model-job-executor's account."""
    role = k8s.rbac.v1.Role(
        name, metadata=meta(name, namespace, "control-plane"), rules=rules, opts=opts
    )
    binding = k8s.rbac.v1.RoleBinding(
        name,
        metadata=meta(name, namespace, "control-plane"),
        role_ref=k8s.rbac.v1.RoleRefArgs(
            api_group="rbac.authorization.k8s.io", kind="Role", name=name
        ),
        subjects=[
            k8s.rbac.v1.SubjectArgs(
                kind="ServiceAccount", name=EXECUTOR_SERVICE_ACCOUNT, namespace=config.namespace
            )
        ],
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(depends_on=[role, executor_account])
        ),
    )
    return role, binding


__all__ = [
    "EXECUTOR_SERVICE_ACCOUNT",
    "PEERS_ROLE",
    "SERVICE_ACCOUNT",
    "Rbac",
    "build_rbac",
    "rbac_rules",
]
