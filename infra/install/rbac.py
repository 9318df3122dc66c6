"""Least-privilege RBAC: a service account per role that calls the API, with what it touches.

The model-job-executor drives the models: it runs ``pulumi up`` on each model's stack
(LeaderWorkerSet, Service, PodMonitor), reads what readiness and failure messages are made of
(:mod:`infra.cluster_observer`: the LWS, pods, events, the weights' PVC) and deletes the pods
of a group on a quarantined node. So its service account, :data:`EXECUTOR_SERVICE_ACCOUNT`, is
bound to one Role in the models namespace and, in the control plane's own namespace, to
:data:`PEERS_ROLE`: ``get`` on pods, so that a stack lock left by an executor pod that no
longer exists is cancelled at once (the lock names its holder's pod).

The accelerator inventory (:mod:`infra.node_inventory`) is read from the nodes and from every
namespace's pods (their requests count, whoever runs them): :data:`NODE_READER_ROLE`, a
ClusterRole of ``get/list/watch`` on ``nodes`` and ``pods``, is bound to the executor and to
the frontend's own account, :data:`FRONTEND_SERVICE_ACCOUNT`, which answers
``/v1/accelerators``. Only with ``aif:taintFaultyNodes`` does the executor also get ``patch``
on nodes (:data:`NODE_TAINTER_ROLE`), to put and remove aif's taint. The other roles run as
:data:`SERVICE_ACCOUNT`, which has no grants and no token. Which pods mount a token is left to
:mod:`infra.install.roles`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.install.config import InstallConfig
from infra.install.objects import meta

# The account of the roles that never call the API: no grants, no token.
SERVICE_ACCOUNT = "aif"
# The model-job-executor's own account: the models, and the nodes' cards.
EXECUTOR_SERVICE_ACCOUNT = "aif-model-job-executor"
# The frontend's: reads the nodes' cards for /v1/accelerators, nothing else.
FRONTEND_SERVICE_ACCOUNT = "aif-frontend"
MODELS_ROLE = "aif-models"
# In the control plane's namespace: whether the executor pod holding a stack lock still exists.
PEERS_ROLE = "aif-executor-peers"
# Cluster-wide: the accelerator inventory, and aif's taint on quarantined nodes.
NODE_READER_ROLE = "aif-node-reader"
NODE_TAINTER_ROLE = "aif-node-tainter"

_READ = ["get", "list", "watch"]
_MANAGE = [*_READ, "create", "update", "patch", "delete"]


def rbac_rules() -> list[k8s.rbac.v1.PolicyRuleArgs]:
    """The model-job-executor's rules in the models namespace: exactly what it touches.

    Managed: the objects of a model's stack (LeaderWorkerSet, Service, PodMonitor). Read: what
    readiness and failure messages are made of (pods, events, PVCs); pods are also deleted, to
    move a group off a quarantined node.
    """
    return [
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=["leaderworkerset.x-k8s.io"], resources=["leaderworkersets"], verbs=_MANAGE
        ),
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["services"], verbs=_MANAGE),
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=[""], resources=["persistentvolumeclaims", "events"], verbs=_READ
        ),
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods"], verbs=[*_READ, "delete"]),
        k8s.rbac.v1.PolicyRuleArgs(
            api_groups=["monitoring.coreos.com"], resources=["podmonitors"], verbs=_MANAGE
        ),
    ]


def node_reader_rules() -> list[k8s.rbac.v1.PolicyRuleArgs]:
    """Cluster-wide reads of the accelerator inventory: nodes' cards and pods' requests."""
    return [k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["nodes", "pods"], verbs=_READ)]


@dataclass(frozen=True)
class Rbac:
    service_account: k8s.core.v1.ServiceAccount
    executor_service_account: k8s.core.v1.ServiceAccount
    frontend_service_account: k8s.core.v1.ServiceAccount
    role: k8s.rbac.v1.Role
    role_binding: k8s.rbac.v1.RoleBinding
    peers_role: k8s.rbac.v1.Role
    peers_binding: k8s.rbac.v1.RoleBinding
    node_reader: k8s.rbac.v1.ClusterRole
    node_reader_binding: k8s.rbac.v1.ClusterRoleBinding
    # Only with aif:taintFaultyNodes.
    node_tainter: k8s.rbac.v1.ClusterRole | None
    node_tainter_binding: k8s.rbac.v1.ClusterRoleBinding | None


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
    frontend_account = k8s.core.v1.ServiceAccount(
        FRONTEND_SERVICE_ACCOUNT,
        metadata=meta(FRONTEND_SERVICE_ACCOUNT, config.namespace, "frontend"),
        opts=after_ns,
    )
    role, role_binding = _bound_role(
        MODELS_ROLE, config.models_namespace, rbac_rules(), config, executor_account, models_opts
    )
    peers = [k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods"], verbs=["get"])]
    peers_role, peers_binding = _bound_role(
        PEERS_ROLE, config.namespace, peers, config, executor_account, after_ns
    )
    reader, reader_binding = _cluster_role(
        NODE_READER_ROLE, node_reader_rules(), config, [executor_account, frontend_account],
        after_ns,
    )  # fmt: skip
    tainter = tainter_binding = None
    if config.taint_faulty_nodes:
        taint = [k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["nodes"], verbs=["patch"])]
        tainter, tainter_binding = _cluster_role(
            NODE_TAINTER_ROLE, taint, config, [executor_account], after_ns
        )
    return Rbac(service_account, executor_account, frontend_account, role, role_binding,
                peers_role, peers_binding, reader, reader_binding, tainter,
                tainter_binding)  # fmt: skip


def _cluster_role(
    name: str,
    rules: list[k8s.rbac.v1.PolicyRuleArgs],
    config: InstallConfig,
    accounts: list[k8s.core.v1.ServiceAccount],
    opts: pulumi.ResourceOptions,
) -> tuple[k8s.rbac.v1.ClusterRole, k8s.rbac.v1.ClusterRoleBinding]:
    """A ClusterRole and its binding to ``accounts`` (of the install namespace)."""
    role = k8s.rbac.v1.ClusterRole(
        name, metadata=meta(name, None, "control-plane"), rules=rules, opts=opts
    )
    binding = k8s.rbac.v1.ClusterRoleBinding(
        name,
        metadata=meta(name, None, "control-plane"),
        role_ref=k8s.rbac.v1.RoleRefArgs(
            api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name
        ),
        subjects=[
            k8s.rbac.v1.SubjectArgs(
                kind="ServiceAccount",
                name=account.metadata.apply(lambda m: m.name or ""),
                namespace=config.namespace,
            )
            for account in accounts
        ],
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(depends_on=[role, *accounts])
        ),
    )
    return role, binding


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
    "FRONTEND_SERVICE_ACCOUNT",
    "NODE_READER_ROLE",
    "NODE_TAINTER_ROLE",
    "PEERS_ROLE",
    "SERVICE_ACCOUNT",
    "Rbac",
    "build_rbac",
    "node_reader_rules",
    "rbac_rules",
]
