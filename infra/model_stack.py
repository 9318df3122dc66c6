"""A model's Pulumi stack: its config, its inline program, and the digest of what it applies.

The stack's config holds the model's desired spec, the quarantined nodes it is kept off, and
every cluster setting
(:func:`stack_config`, read back by :func:`args_from_config`); its inline program
(:func:`model_program`) builds the :class:`~infra.model_deployment.ModelDeployment` from that
config and exports the component's outputs, ``replicas`` and ``specHash``: a digest of the
config and the rendered manifests *without* the replicas (:func:`desired_stack`), so that a
change of instances alone is a scale (one config key and an update), not a redeploy. Running
the stacks is left to :mod:`infra.pulumi_deployer`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass

import pulumi

from domain.deployment import DeployerError, DeploymentSpec
from domain.presets import load_presets
from domain.records import Pvc
from domain.settings import ClusterConfig
from infra import cluster_settings
from infra.cluster_settings import Lookup
from infra.manifests import SizingError, k8s_name, render_model
from infra.model_deployment import ModelDeployment, ModelDeploymentArgs

PROJECT_NAME = "aif-models"
SPEC_HASH_KEY = "specHash"
REPLICAS_KEY = "replicas"
# The quarantined nodes the model is kept off, as a JSON list; always set, so that an empty
# set replaces the last one.
AVOID_NODES_KEY = "avoidNodes"


# --- stack config and the inline program ------------------------------------------------------


def _spec_values(spec: DeploymentSpec) -> dict[str, str]:
    # The generation is left out: it changes nothing rendered, so it must not change the hash.
    return {
        "modelId": spec.model_id,
        "modelName": spec.name,
        "modelType": spec.type,
        "resourceType": spec.resource_type,
        "version": spec.version,
        "replicas": str(spec.replicas),
        "pvcName": spec.pvc.name,
        "pvcPath": spec.pvc.path,
    }


def stack_config(args: ModelDeploymentArgs) -> dict[str, str]:
    """The stack's config: the spec's fields and every cluster setting, as camelCase keys.

    The cluster settings are generated from ``ClusterConfig`` (:mod:`infra.cluster_settings`),
    so a new one reaches the stack, and its hash, with no change here.
    """
    spec = _spec_values(args.spec)
    spec[AVOID_NODES_KEY] = json.dumps(sorted(args.avoid_nodes))
    cluster = cluster_settings.stack_values(args.cluster)
    clash = spec.keys() & cluster.keys()
    if clash:
        raise ValueError(f"cluster settings {sorted(clash)} clash with the spec's stack keys")
    return {**spec, **cluster}


def args_from_config(values: Lookup) -> ModelDeploymentArgs:
    """The inverse of :func:`stack_config` (the generation is not kept: it reads as 0)."""

    def required(key: str) -> str:
        value = values.get(key)
        if value is None:
            raise ValueError(f"stack config {key!r} is missing")
        return value

    spec = DeploymentSpec(
        model_id=required("modelId"),
        name=required("modelName"),
        type=required("modelType"),
        resource_type=required("resourceType"),
        version=values.get("version") or "",
        replicas=int(required("replicas")),
        pvc=Pvc(name=required("pvcName"), path=required("pvcPath")),
        generation=0,
    )
    avoid = tuple(json.loads(values.get(AVOID_NODES_KEY) or "[]"))
    return ModelDeploymentArgs(spec, cluster_settings.from_stack_values(values), avoid)


def model_program() -> None:
    """The inline program of every model stack: a ModelDeployment from the stack's config."""
    config = pulumi.Config()
    args = args_from_config(config)
    deployment = ModelDeployment(k8s_name(args.spec.name, args.spec.model_id), args)
    pulumi.export("lwsName", deployment.lws_name)
    pulumi.export("serviceName", deployment.service_name)
    pulumi.export("clusterIp", deployment.cluster_ip)
    pulumi.export("port", deployment.port)
    pulumi.export(REPLICAS_KEY, args.spec.replicas)
    pulumi.export(SPEC_HASH_KEY, config.require(SPEC_HASH_KEY))


@dataclass(frozen=True)
class DesiredStack:
    config: dict[str, str]
    spec_hash: str


def desired_stack(
    spec: DeploymentSpec, cluster: ClusterConfig, avoid_nodes: Collection[str] = ()
) -> DesiredStack:
    """The stack config for ``spec`` (kept off ``avoid_nodes``) and its digest of everything
    but the replicas; refuses specs that cannot be rendered. A change of the quarantined nodes
    changes the digest: the affinity is re-applied by a full update."""
    presets = load_presets()
    if spec.type not in presets:
        known = ", ".join(sorted(presets))
        raise DeployerError(
            f"no preset for model type {spec.type!r} (known: {known})",
            reason="UnknownModelType",
            retryable=False,
        )
    try:
        manifests = render_model(spec, presets[spec.type], cluster, avoid_nodes)
    except SizingError as exc:
        raise DeployerError(str(exc), reason="InvalidSpec", retryable=False) from exc
    base = stack_config(ModelDeploymentArgs(spec, cluster, tuple(sorted(avoid_nodes))))
    # The rendered objects are in the digest, so an aif upgrade that changes them re-applies.
    # Replicas are not: a scale sets that one key and updates, without a full redeploy.
    lws = next(obj for obj in manifests if obj["kind"] == "LeaderWorkerSet")
    lws["spec"]["replicas"] = 0
    config = {k: v for k, v in base.items() if k != REPLICAS_KEY}
    text = json.dumps({"config": config, "manifests": manifests}, sort_keys=True)
    spec_hash = hashlib.sha256(text.encode()).hexdigest()[:16]
    return DesiredStack({**base, SPEC_HASH_KEY: spec_hash}, spec_hash)


__all__ = [
    "AVOID_NODES_KEY",
    "PROJECT_NAME",
    "REPLICAS_KEY",
    "SPEC_HASH_KEY",
    "DesiredStack",
    "args_from_config",
    "desired_stack",
    "model_program",
    "stack_config",
]
