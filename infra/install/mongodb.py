"""The in-cluster MongoDB of ``aif:enableLocalStorage``: a StatefulSet, its Service and policy.

One replica without authentication, on a ReadWriteOnce volume, behind a headless Service that
a NetworkPolicy opens to aif's own pods only. A managed database (``aif:mongodbUrl``, e.g. DDS)
is left to the operator; wiring the URL into the roles' settings to
:mod:`infra.install.installation`.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.install.config import InstallConfig
from infra.install.objects import claim_spec, labels, meta, selector

MONGODB_NAME = "aif-mongodb"
MONGODB_PORT = 27017
# The official mongo image runs as the ``mongodb`` user, uid and gid 999.
MONGODB_UID = 999


def mongodb_service_url(namespace: str) -> str:
    return f"mongodb://{MONGODB_NAME}.{namespace}.svc.cluster.local:{MONGODB_PORT}/"


def _headless_service(ns: str, opts: pulumi.ResourceOptions) -> k8s.core.v1.Service:
    return k8s.core.v1.Service(
        MONGODB_NAME,
        metadata=meta(MONGODB_NAME, ns, "mongodb"),
        spec=k8s.core.v1.ServiceSpecArgs(
            cluster_ip="None",
            selector=selector("mongodb"),
            ports=[k8s.core.v1.ServicePortArgs(name="mongodb", port=MONGODB_PORT)],
        ),
        opts=opts,
    )


def _network_policy(ns: str, opts: pulumi.ResourceOptions) -> k8s.networking.v1.NetworkPolicy:
    # Only aif's own pods may reach the database (it runs without authentication).
    aif_pods = k8s.networking.v1.NetworkPolicyPeerArgs(
        pod_selector=k8s.meta.v1.LabelSelectorArgs(
            match_labels={"app.kubernetes.io/part-of": "aif"}
        )
    )
    return k8s.networking.v1.NetworkPolicy(
        MONGODB_NAME,
        metadata=meta(MONGODB_NAME, ns, "mongodb"),
        spec=k8s.networking.v1.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector("mongodb")),
            policy_types=["Ingress"],
            ingress=[
                k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                    from_=[aif_pods],
                    ports=[k8s.networking.v1.NetworkPolicyPortArgs(port=MONGODB_PORT)],
                )
            ],
        ),
        opts=opts,
    )


def _pod_spec(config: InstallConfig) -> k8s.core.v1.PodSpecArgs:
    tcp_probe = k8s.core.v1.ProbeArgs(
        tcp_socket=k8s.core.v1.TCPSocketActionArgs(port=MONGODB_PORT), period_seconds=10
    )
    container = k8s.core.v1.ContainerArgs(
        name="mongodb",
        image=config.mongodb_image,
        ports=[k8s.core.v1.ContainerPortArgs(name="mongodb", container_port=MONGODB_PORT)],
        readiness_probe=tcp_probe,
        liveness_probe=tcp_probe,
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "250m", "memory": "512Mi"},
            limits={"cpu": "2", "memory": "2Gi"},
        ),
        volume_mounts=[k8s.core.v1.VolumeMountArgs(name="data", mount_path="/data/db")],
    )
    return k8s.core.v1.PodSpecArgs(
        automount_service_account_token=False,
        security_context=k8s.core.v1.PodSecurityContextArgs(
            run_as_non_root=True, run_as_user=MONGODB_UID, fs_group=MONGODB_UID
        ),
        containers=[container],
    )


def build_mongodb(config: InstallConfig, opts: pulumi.ResourceOptions) -> k8s.apps.v1.StatefulSet:
    """MongoDB for ``enableLocalStorage``: one replica on its own volume, reachable by aif only."""
    ns = config.namespace
    service = _headless_service(ns, opts)
    _network_policy(ns, opts)
    return k8s.apps.v1.StatefulSet(
        MONGODB_NAME,
        metadata=meta(MONGODB_NAME, ns, "mongodb"),
        spec=k8s.apps.v1.StatefulSetSpecArgs(
            service_name=MONGODB_NAME,
            replicas=1,
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector("mongodb")),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels("mongodb")),
                spec=_pod_spec(config),
            ),
            volume_claim_templates=[
                k8s.core.v1.PersistentVolumeClaimArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(name="data"),
                    spec=claim_spec(config.mongodb_storage_size, config.storage_class_name),
                )
            ],
        ),
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[service])),
    )


__all__ = ["MONGODB_NAME", "MONGODB_PORT", "build_mongodb", "mongodb_service_url"]
