"""Builders every part of the installation shares: labels, metadata, claims, ordering.

Every object carries the ``app.kubernetes.io`` labels of its component, which the selectors
and aif's own NetworkPolicy match on. The objects themselves are left to the modules that make
them (:mod:`infra.install.installation`, :mod:`~infra.install.roles`,
:mod:`~infra.install.rbac`, :mod:`~infra.install.mongodb`).
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s


def labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "aif",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "aif",
        "app.kubernetes.io/managed-by": "pulumi",
    }


def selector(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "aif", "app.kubernetes.io/component": component}


def after(
    base: pulumi.ResourceOptions, *resources: pulumi.Resource | None
) -> pulumi.ResourceOptions:
    present = [r for r in resources if r is not None]
    if not present:
        return base
    return pulumi.ResourceOptions.merge(base, pulumi.ResourceOptions(depends_on=present))


def meta(name: str | None, namespace: str | None, component: str) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=labels(component))


def claim_spec(size: str, storage_class: str | None) -> k8s.core.v1.PersistentVolumeClaimSpecArgs:
    return k8s.core.v1.PersistentVolumeClaimSpecArgs(
        access_modes=["ReadWriteOnce"],
        storage_class_name=storage_class,
        resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": size}),
    )


__all__ = ["after", "claim_spec", "labels", "meta", "selector"]
