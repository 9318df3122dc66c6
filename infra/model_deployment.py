"""``ModelDeployment``: the Pulumi component that applies one model's Kubernetes objects.

The objects themselves come from :func:`infra.manifests.render_model`, so what Pulumi applies
is exactly what ``aif render`` prints; this module only turns each one into a Pulumi resource
(the ``LeaderWorkerSet`` and ``PodMonitor`` as ``apiextensions.CustomResource``, the
``Service`` as a typed ``core.v1.Service``), parents it to the component and exports the
names and address the gateway needs. Stacks, the Automation API and reading readiness are
left to :mod:`infra.pulumi_deployer`.

Awaiting. Every object carries ``pulumi.com/skipAwait: "true"``, so ``pulumi up`` returns as
soon as the API server has accepted them. A model loads for many minutes (a 72B one from
object storage can take half an hour): awaiting the Service (which waits for ready endpoints)
or the LWS (``pulumi.com/waitFor: condition=Available``) would hold the stack's lock and a
deployer worker for that long and then fail on Pulumi's timeout, not on the model. aif
watches the LWS status (``readyReplicas``, conditions) itself and reports ``DEPLOYING`` until
the instances are ready, so a stuck load surfaces as a model status rather than a failed
update. The same annotation means a destroy returns before the pods have terminated: the
deployer waits for the pods itself.

Ownership. Every object also carries ``pulumi.com/patchForce: "true"``: the provider's
server-side apply then forces conflicts, so when another field manager took a field (a
``kubectl scale`` owns ``spec.replicas``), the next update takes it back instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_kubernetes.apiextensions import CustomResource
from pulumi_kubernetes.core.v1 import Service
from pulumi_kubernetes.meta.v1 import ObjectMetaArgs

from domain.deployment import DeploymentSpec
from domain.presets import load_presets
from domain.settings import ClusterConfig
from infra.manifests import ENGINE_PORT, Manifest, render_model

COMPONENT_TYPE = "aif:index:ModelDeployment"
SKIP_AWAIT_ANNOTATION = "pulumi.com/skipAwait"
PATCH_FORCE_ANNOTATION = "pulumi.com/patchForce"


@dataclass(frozen=True)
class ModelDeploymentArgs:
    """One model's desired spec and the cluster settings it is rendered with.

    Plain values rather than Pulumi inputs: the manifests are rendered by a pure function, and
    the deployer that builds the args already holds the whole desired spec. How they are kept
    in a stack's config is left to :mod:`infra.pulumi_deployer`.
    """

    spec: DeploymentSpec
    cluster: ClusterConfig
    # Nodes whose cards are quarantined: the model's pods are kept off them.
    avoid_nodes: tuple[str, ...] = ()


def _metadata(obj: Manifest) -> ObjectMetaArgs:
    """The object's metadata, annotated so that Pulumi neither awaits it nor yields a field
    to another manager (see above)."""
    meta: dict[str, Any] = obj["metadata"]
    annotations = {SKIP_AWAIT_ANNOTATION: "true", PATCH_FORCE_ANNOTATION: "true"}
    return ObjectMetaArgs(
        name=meta["name"],
        namespace=meta["namespace"],
        labels=meta.get("labels", {}),
        annotations={**meta.get("annotations", {}), **annotations},
    )


class ModelDeployment(pulumi.ComponentResource):
    """A model's LeaderWorkerSet, leader Service and optional PodMonitor."""

    lws_name: pulumi.Output[str]
    service_name: pulumi.Output[str]
    cluster_ip: pulumi.Output[str]
    port: pulumi.Output[int]

    def __init__(
        self,
        name: str,
        args: ModelDeploymentArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        presets = load_presets()
        if args.spec.type not in presets:
            raise ValueError(f"unknown model type {args.spec.type!r}")
        objects = render_model(args.spec, presets[args.spec.type], args.cluster, args.avoid_nodes)
        child = pulumi.ResourceOptions(parent=self)

        by_kind = {obj["kind"]: obj for obj in objects}
        lws, service = by_kind["LeaderWorkerSet"], by_kind["Service"]
        self.lws = self._custom_resource(f"{name}-lws", lws, child)
        self.service = Service(
            f"{name}-service",
            metadata=_metadata(service),
            # Pulumi passes camelCase dicts through to the API server unchanged.
            spec=service["spec"],
            opts=child,
        )
        monitor = by_kind.get("PodMonitor")
        self.pod_monitor = (
            self._custom_resource(f"{name}-podmonitor", monitor, child) if monitor else None
        )

        # The names are fixed by the manifests; tying them to the URNs orders them after
        # the resources without making them unknown during a preview.
        lws_name: str = lws["metadata"]["name"]
        svc_name: str = service["metadata"]["name"]
        self.lws_name = self.lws.urn.apply(lambda _: lws_name)
        self.service_name = self.service.urn.apply(lambda _: svc_name)
        self.cluster_ip = self.service.spec.apply(lambda s: s.cluster_ip or "")
        self.port = pulumi.Output.from_input(ENGINE_PORT)
        self.register_outputs(
            {
                "lws_name": self.lws_name,
                "service_name": self.service_name,
                "cluster_ip": self.cluster_ip,
                "port": self.port,
            }
        )

    @staticmethod
    def _custom_resource(
        resource_name: str, obj: Manifest, opts: pulumi.ResourceOptions
    ) -> CustomResource:
        return CustomResource(
            resource_name,
            api_version=obj["apiVersion"],
            kind=obj["kind"],
            metadata=_metadata(obj),
            spec=obj["spec"],
            opts=opts,
        )
