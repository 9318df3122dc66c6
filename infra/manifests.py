"""One pure function from a model to its Kubernetes objects.

:func:`render_model` turns a :class:`~domain.deployment.DeploymentSpec` and its preset into
plain dicts: a ``LeaderWorkerSet`` in the shape of the product's template, a ClusterIP
``Service`` in front of the group leaders and, when asked, a Prometheus ``PodMonitor``.
:func:`render_spec_documents` prints them as YAML (``aif render``); :func:`render_documents`
does it for a register body, whose validation is the API's.
Nothing here imports Pulumi or talks to a cluster: applying the objects, and deciding whether
to await them, is left to :mod:`infra.model_deployment`; watching readiness to the deployer.

Names. The LWS is named :func:`k8s_name` (a DNS-1035 label from the model's name plus an id
suffix). LWS itself creates a *headless* Service of that very name for its pods' DNS
(``$LWS_LEADER_ADDRESS``), so the ClusterIP Service is :func:`service_name`, ``<name>-leader``.

Sizing. How many pods an instance spans and how its cards split into tensor and pipeline
parallel is decided by :func:`infra.sizing.plan_parallelism`, which raises
:class:`~infra.sizing.SizingError` (re-exported here) for a preset that cannot fit. Pods of one
instance are joined by Ray; how each container starts (Ray, CANN's environment, the
multi-node Ascend recipe, a block size CUDA accepts) is :mod:`infra.engine_launch`'s. The
engine's flags come from :func:`infra.vllm_args.vllm_args`, shared with local engines;
``--max-model-len`` is always set.

Quarantined nodes. :func:`render_model` takes the nodes aif keeps its models off (their cards
are quarantined, :mod:`infra.node_quarantine`): every pod template then requires
``kubernetes.io/hostname NotIn [...]``. Engines leave their log's tail as the termination
message of a failed container (``FallbackToLogsOnError``), where a device error is read.

Weight cache. With ``ClusterConfig.cache_pvc`` set, the pods copy the weights to that fast
volume first and the engine reads them from there; the init container that does it is
:mod:`infra.weight_cache`'s.

Gang scheduling. With ``ClusterConfig.gang_scheduling`` ``"volcano"`` the pods are Volcano's
and the LWS names its PodGroups' queue; LWS makes each group a PodGroup
(:mod:`infra.gang_scheduling`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from typing import Any

import yaml

from domain.deployment import DeploymentSpec
from domain.presets import Preset, load_presets
from domain.records import Pvc
from domain.settings import ClusterConfig
from infra import gang_scheduling as gang
from infra.engine_launch import (
    WORKER_SCRIPT as WORKER_SCRIPT,  # the workers' Ray join, for tests and docs
)
from infra.engine_launch import ascend_multi_node_env, block_size, extra_engine_args, run_section
from infra.sizing import Parallelism, plan_parallelism
from infra.sizing import SizingError as SizingError  # render_model's error, for its callers
from infra.vllm_args import vllm_args
from infra.weight_cache import (
    CACHE_VOLUME,
    cache_init_container,
    cache_path,
    cache_volume,
    kubelet_literal,
)

Manifest = dict[str, Any]

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
VOLCANO_QUEUE_ANNOTATION = gang.VOLCANO_QUEUE_ANNOTATION
MANAGED_BY = "aif"
ENGINE_PORT = 8000
PORT_NAME = "http"
# LWS names pods, StatefulSets and controller-revision-hash labels (at most 63 characters)
# after the set, adding group and worker indexes and a 10-character hash.
LWS_NAME_MAX_CHARS = 45
ID_SUFFIX_CHARS = 8
# Loading a 70B model from object storage onto its cards can take tens of minutes.
STARTUP_TIMEOUT_S = 3600
STARTUP_PERIOD_S = 10
# /health shares vLLM's event loop with streaming responses; under load it answers slowly.
PROBE_TIMEOUT_S = 5
# Liveness recreates the whole group (RecreateGroupOnPodRestart): only a server that has not
# answered for two minutes is dead, not one slow /health under a burst of long prompts.
LIVENESS_PERIOD_S = 15
LIVENESS_TIMEOUT_S = 10
LIVENESS_FAILURES = 8
# NCCL/HCCL and Ray use shared memory between processes of one pod.
SHM_SIZE = "16Gi"
HOSTNAME_LABEL = "kubernetes.io/hostname"


# --- names -----------------------------------------------------------------------------------


def _id_suffix(model_id: str) -> str:
    lowered = model_id.lower()
    if re.fullmatch(rf"[0-9a-f]{{{ID_SUFFIX_CHARS},}}", lowered):
        return lowered[:ID_SUFFIX_CHARS]
    # Ids not made by aif (hand-written, imported) still get a short, stable suffix.
    return hashlib.md5(model_id.encode(), usedforsecurity=False).hexdigest()[:ID_SUFFIX_CHARS]


def k8s_name(model_name: str, model_id: str) -> str:
    """A DNS-1035 label for the model's objects, unique through a suffix of its id."""
    base = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")
    if not base[:1].isalpha():
        base = f"m-{base}".rstrip("-")
    base = base[: LWS_NAME_MAX_CHARS - ID_SUFFIX_CHARS - 1].rstrip("-")
    return f"{base}-{_id_suffix(model_id)}"


def service_name(lws_name: str) -> str:
    """The ClusterIP Service of the leaders; ``lws_name`` itself is LWS's headless Service."""
    return f"{lws_name}-leader"


def label_value(text: str) -> str:
    """``text`` made a valid label value: at most 63 of ``[A-Za-z0-9._-]``, alphanumeric ends."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("._-")


# --- pod templates ---------------------------------------------------------------------------


def _engine_args(spec: DeploymentSpec, preset: Preset, par: Parallelism) -> list[str]:
    args = [
        "--model", model_dir(preset),
        "--served-model-name", spec.name,
        *vllm_args(
            preset.vllm.model_copy(
                update={"block_size": block_size(preset.vllm.block_size, spec.resource_type)}
            ),
            tensor_parallel=par.tensor_parallel,
            pipeline_parallel=par.pipeline_parallel,
        ),
        "--port", str(ENGINE_PORT),
        *extra_engine_args(spec.resource_type, par.pipeline_parallel),
        *preset.vllm.extra_args,
    ]  # fmt: skip
    return [kubelet_literal(arg) for arg in args]


def model_dir(preset: Preset) -> str:
    """Where the engine sees the weights, as in the product's template."""
    return f"/workspace/{preset.hf_repo}"


def _probe(timeout_s: int = PROBE_TIMEOUT_S, **timing: int) -> dict[str, Any]:
    get = {"path": "/health", "port": ENGINE_PORT}
    return {"httpGet": get, "timeoutSeconds": timeout_s, **timing}


def _away_from(nodes: Collection[str]) -> dict[str, Any]:
    """Node affinity that keeps a pod off ``nodes`` (their cards are quarantined)."""
    term = {"matchExpressions": [
        {"key": HOSTNAME_LABEL, "operator": "NotIn", "values": sorted(nodes)}]}  # fmt: skip
    required = {"nodeSelectorTerms": [term]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


def _pod_spec(
    container: dict[str, Any],
    spec: DeploymentSpec,
    cluster: ClusterConfig,
    avoid_nodes: Collection[str] = (),
) -> Manifest:
    volumes: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": spec.pvc.name}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
    ]
    pod: dict[str, Any] = {}
    if scheduler := gang.scheduler_name(cluster):
        pod["schedulerName"] = scheduler
    if avoid_nodes:
        pod["affinity"] = _away_from(avoid_nodes)
    if cluster.cache_pvc:
        volumes.append(cache_volume(cluster.cache_pvc))
        # The engine's image has bash and cp; a second image would only add a pull.
        pod["initContainers"] = [cache_init_container(container["image"], spec.pvc)]
    return {**pod, "containers": [container], "volumes": volumes}


def _container(
    spec: DeploymentSpec,
    preset: Preset,
    par: Parallelism,
    cluster: ClusterConfig,
    run: dict[str, Any],
    serves: bool,
) -> dict[str, Any]:
    """The engine container; ``serves`` adds the API port and probes (single node or leader)."""
    profile = preset.profile(spec.resource_type)
    env = {"HF_HUB_OFFLINE": "1", **preset.env, **profile.env}
    cards = str(par.accelerators_per_node)
    weights: dict[str, Any] = {"name": "models", "mountPath": model_dir(preset), "readOnly": True}
    weights["subPath"] = spec.pvc.path
    if cluster.cache_pvc:
        weights |= {"name": CACHE_VOLUME, "subPath": cache_path(spec.pvc)}
    container: dict[str, Any] = {
        "name": profile.container_name,
        "image": cluster.engine_image or profile.image,
        "imagePullPolicy": "IfNotPresent",
        # A failed engine's last log lines reach the pod's status: device errors are read there.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **run,
        "env": [
            *({"name": k, "value": kubelet_literal(v)} for k, v in env.items()),
            *ascend_multi_node_env(spec.resource_type, par.nodes),
        ],
    }
    if serves:
        container["ports"] = [{"name": PORT_NAME, "containerPort": ENGINE_PORT, "protocol": "TCP"}]
    container["resources"] = {
        "requests": {"cpu": profile.cpu_request, "memory": profile.memory_request},
        "limits": {"cpu": profile.cpu_limit, "memory": profile.memory_limit},
    }
    container["resources"]["requests"][spec.resource_type] = cards
    container["resources"]["limits"][spec.resource_type] = cards
    container["volumeMounts"] = [weights, {"name": "dshm", "mountPath": "/dev/shm"}]
    if serves:
        container["startupProbe"] = _probe(
            periodSeconds=STARTUP_PERIOD_S, failureThreshold=STARTUP_TIMEOUT_S // STARTUP_PERIOD_S
        )
        container["readinessProbe"] = _probe(
            initialDelaySeconds=5, periodSeconds=5, failureThreshold=3
        )
        container["livenessProbe"] = _probe(
            LIVENESS_TIMEOUT_S, periodSeconds=LIVENESS_PERIOD_S, failureThreshold=LIVENESS_FAILURES
        )
    return container


# --- objects ---------------------------------------------------------------------------------


def leader_selector(lws_name: str) -> dict[str, str]:
    """Labels that pick the leader pods of every group (LWS adds the name label)."""
    return {LWS_NAME_LABEL: lws_name, "role": "leader"}


def _labels(
    spec: DeploymentSpec, preset: Preset, name: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels of every object, labels of every pod of the model's groups)."""
    version = label_value(spec.version) or "1"
    common = {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "aif/model-id": label_value(spec.model_id),
        "xds/version": version,
    }
    group = {
        "xds/modelId": label_value(spec.model_id),
        "xds/teGroupId": name,
        "xds/teGroupType": label_value(preset.name),
        "xds/version": version,
    }
    return common, group


def _pod_metadata(pod_labels: dict[str, str], cluster: ClusterConfig) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": pod_labels}
    if cluster.volcano_queue:
        meta["annotations"] = {VOLCANO_QUEUE_ANNOTATION: cluster.volcano_queue}
    return meta


def _group_template(
    spec: DeploymentSpec,
    preset: Preset,
    par: Parallelism,
    cluster: ClusterConfig,
    name: str,
    avoid_nodes: Collection[str],
) -> dict[str, Any]:
    """The LWS ``leaderWorkerTemplate``: one leader serving the API, Ray workers if needed."""
    _, group = _labels(spec, preset, name)
    args = _engine_args(spec, preset, par)
    multi_node = par.nodes > 1
    run = run_section(spec.resource_type, args, nodes=par.nodes, leader=True)
    leader = _container(spec, preset, par, cluster, run, serves=True)
    leader_meta = _pod_metadata({"xds/instanceType": "head", **group, "role": "leader"}, cluster)
    # LWS makes no workers for a group of size 1.
    worker_template: dict[str, Any] = {"spec": {"containers": []}}
    if multi_node:
        run = run_section(spec.resource_type, args, nodes=par.nodes, leader=False)
        worker = _container(spec, preset, par, cluster, run, serves=False)
        worker_template = {
            "metadata": _pod_metadata({"xds/instanceType": "worker", **group}, cluster),
            "spec": _pod_spec(worker, spec, cluster, avoid_nodes),
        }
    return {
        "size": par.nodes,
        "restartPolicy": "RecreateGroupOnPodRestart",
        "leaderTemplate": {
            "metadata": leader_meta,
            "spec": _pod_spec(leader, spec, cluster, avoid_nodes),
        },
        "workerTemplate": worker_template,
    }


def _leader_service(name: str, cluster: ClusterConfig, common: dict[str, str]) -> Manifest:
    port = {"name": PORT_NAME, "port": ENGINE_PORT, "targetPort": ENGINE_PORT, "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(name), "namespace": cluster.namespace, "labels": common},
        "spec": {"type": "ClusterIP", "selector": leader_selector(name), "ports": [port]},
    }


def _pod_monitor(name: str, cluster: ClusterConfig, common: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": name, "namespace": cluster.namespace, "labels": common},
        "spec": {
            "selector": {"matchLabels": leader_selector(name)},
            "podMetricsEndpoints": [{"port": PORT_NAME, "path": "/metrics"}],
        },
    }


def render_model(
    spec: DeploymentSpec,
    preset: Preset,
    cluster: ClusterConfig,
    avoid_nodes: Collection[str] = (),
) -> list[Manifest]:
    """The model's Kubernetes objects: LWS, Service and, when configured, a PodMonitor; the
    pods are kept off ``avoid_nodes``.

    Raises :class:`SizingError` when the preset cannot run on the accelerators it names.
    """
    par = plan_parallelism(preset, spec.resource_type, cluster)
    name = k8s_name(spec.name, spec.model_id)
    common, _ = _labels(spec, preset, name)
    lws = {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": {
            "name": name,
            "namespace": cluster.namespace,
            "labels": common,
            "annotations": {"aif/model-name": spec.name, **gang.lws_annotations(cluster)},
        },
        "spec": {
            "replicas": spec.replicas,
            # Workers must start with the leader: its Ray head waits for them to join.
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": _group_template(spec, preset, par, cluster, name, avoid_nodes),
        },
    }
    objects: list[Manifest] = [lws, _leader_service(name, cluster, common)]
    if cluster.pod_monitor:
        objects.append(_pod_monitor(name, cluster, common))
    return objects


def render_spec_documents(spec: DeploymentSpec, cluster: ClusterConfig) -> str:
    """Multi-document YAML of :func:`render_model`'s objects for ``spec`` (``aif render``);
    gang-scheduled, the PodGroup LWS will create per group follows as a comment."""
    objects = render_model(spec, load_presets()[spec.type], cluster)
    text = yaml.dump_all(objects, Dumper=_ReadableDumper, sort_keys=False)
    lws = objects[0]
    pod_group = gang.pod_group_preview(lws, cluster)
    if pod_group is not None:
        text += gang.preview_comment(pod_group, lws["metadata"]["name"])
    return text


def render_spec(
    name: str, model_type: str, resource_type: str, version: str, replicas: int, pvc: Pvc
) -> DeploymentSpec:
    """The spec ``aif render`` shows for a register body: a stable id from the name, so that
    renders of one body are identical."""
    return DeploymentSpec(
        model_id=hashlib.md5(name.encode(), usedforsecurity=False).hexdigest(),
        name=name,
        type=model_type,
        resource_type=resource_type,
        version=version,
        replicas=replicas,
        pvc=pvc,
        generation=1,
    )


class _ReadableDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that prints multi-line strings (the pods' scripts) as ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ReadableDumper.add_representer(str, _represent_str)
