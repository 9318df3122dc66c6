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
update. The same annotation means a destroy returns before the pods have terminated.
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
from domain.records import Pvc
from domain.settings import ClusterConfig
from infra.manifests import ENGINE_PORT, Manifest, render_model

COMPONENT_TYPE = "aif:index:ModelDeployment"
SKIP_AWAIT_ANNOTATION = "pulumi.com/skipAwait"


@dataclass(frozen=True)
class ModelDeploymentArgs:
    """One model and its cluster settings as flat, plain values.

    Plain values rather than Pulumi inputs: the manifests are rendered by a pure function, and
    the deployer that builds the args already holds the whole desired spec.
    """

    model_id: str
    model_name: str
    model_type: str
    resource_type: str
    version: str
    replicas: int
    pvc_name: str
    pvc_path: str
    generation: int = 1
    namespace: str = "aif-models"
    image: str = ""
    scheduler_name: str = ""
    volcano_queue: str = ""
    cache_pvc: str = ""
    pod_monitor: bool = False
    max_accelerators_per_node: int = 8

    @classmethod
    def of(cls, spec: DeploymentSpec, cluster: ClusterConfig) -> ModelDeploymentArgs:
        return cls(
            model_id=spec.model_id,
            model_name=spec.name,
            model_type=spec.type,
            resource_type=spec.resource_type,
            version=spec.version,
            replicas=spec.replicas,
            pvc_name=spec.pvc.name,
            pvc_path=spec.pvc.path,
            generation=spec.generation,
            namespace=cluster.namespace,
            image=cluster.engine_image,
            scheduler_name=cluster.scheduler_name,
            volcano_queue=cluster.volcano_queue,
            cache_pvc=cluster.cache_pvc,
            pod_monitor=cluster.pod_monitor,
            max_accelerators_per_node=cluster.max_accelerators_per_node,
        )

    def to_spec(self) -> DeploymentSpec:
        return DeploymentSpec(
            model_id=self.model_id,
            name=self.model_name,
            type=self.model_type,
            resource_type=self.resource_type,
            version=self.version,
            replicas=self.replicas,
            pvc=Pvc(name=self.pvc_name, path=self.pvc_path),
            generation=self.generation,
        )

    def to_cluster(self) -> ClusterConfig:
        return ClusterConfig(
            namespace=self.namespace,
            engine_image=self.image,
            scheduler_name=self.scheduler_name,
            volcano_queue=self.volcano_queue,
            cache_pvc=self.cache_pvc,
            pod_monitor=self.pod_monitor,
            max_accelerators_per_node=self.max_accelerators_per_node,
        )

    def to_spec_and_cluster(self) -> tuple[DeploymentSpec, ClusterConfig]:
        return self.to_spec(), self.to_cluster()


def _metadata(obj: Manifest) -> ObjectMetaArgs:
    """The object's metadata, annotated so that Pulumi does not await it (see above)."""
    meta: dict[str, Any] = obj["metadata"]
    return ObjectMetaArgs(
        name=meta["name"],
        namespace=meta["namespace"],
        labels=meta.get("labels", {}),
        annotations={**meta.get("annotations", {}), SKIP_AWAIT_ANNOTATION: "true"},
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
        if args.model_type not in presets:
            raise ValueError(f"unknown model type {args.model_type!r}")
        spec, cluster = args.to_spec_and_cluster()
        objects = render_model(spec, presets[args.model_type], cluster)
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
