"""What a model's deployment looks like in the cluster, and what that means for its phase.

Readiness is read from the cluster, not from Pulumi (the objects are not awaited): a
:class:`ClusterObserver` reports the LeaderWorkerSet's ``readyReplicas``, the pods' states,
warning events and the weights' PVC (:class:`KubernetesObserver` reads them with the official
client), and :func:`diagnose` turns a :class:`ClusterSnapshot` of them into a phase and an
actionable message: a missing PVC, an image that cannot be pulled, a crashing engine, too few
free accelerators. :func:`model_url` is the address a ready model answers on.

Deciding what to read and when is left to :mod:`infra.pulumi_deployer`, the names of the
objects to :mod:`infra.manifests`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from domain.deployment import DeploymentSpec, DeploymentState, Phase
from domain.records import Endpoint
from infra.manifests import ENGINE_PORT, k8s_name, service_name

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, V1Pod


# --- what the cluster shows --------------------------------------------------------------------


@dataclass(frozen=True)
class LwsStatus:
    replicas: int
    ready_replicas: int


@dataclass(frozen=True)
class ContainerProblem:
    """A container that is waiting, e.g. ``ImagePullBackOff`` or ``CrashLoopBackOff``."""

    container: str
    reason: str
    message: str = ""
    restarts: int = 0
    last_exit: str = ""  # e.g. "OOMKilled, exit code 137"


@dataclass(frozen=True)
class PodStatus:
    name: str
    phase: str
    ready: bool = False
    unschedulable: str = ""  # the scheduler's message while the pod cannot be placed
    problems: tuple[ContainerProblem, ...] = ()


@dataclass(frozen=True)
class ClusterEvent:
    object_name: str
    reason: str
    message: str


@dataclass(frozen=True)
class ClusterSnapshot:
    lws: LwsStatus | None
    pods: tuple[PodStatus, ...] = ()
    events: tuple[ClusterEvent, ...] = ()
    pvc_exists: bool = True


class ClusterObserver(Protocol):
    """Reads what a model's deployment looks like; synchronous, called from worker threads."""

    def leader_worker_set(self, namespace: str, name: str) -> LwsStatus | None: ...

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[PodStatus]: ...

    def warning_events(self, namespace: str, object_names: Collection[str]) -> list[ClusterEvent]:
        """Warning events about the named objects."""
        ...

    def pvc_exists(self, namespace: str, name: str) -> bool: ...

    def close(self) -> None: ...


class KubernetesObserver:
    """:class:`ClusterObserver` over the official client: in-cluster config, else KUBECONFIG.

    The client is imported and configured at the first read, so building a deployer needs
    neither a cluster nor the package.
    """

    def __init__(self, request_timeout_s: float = 10.0) -> None:
        self._timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._api: ApiClient | None = None

    def _client(self) -> ApiClient:
        with self._lock:
            if self._api is None:
                from kubernetes import client, config

                configuration = client.Configuration()
                # The package's config loaders carry no annotations.
                try:
                    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                except config.ConfigException:
                    config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                self._api = client.ApiClient(configuration)
            return self._api

    def leader_worker_set(self, namespace: str, name: str) -> LwsStatus | None:
        from kubernetes import client

        api = client.CustomObjectsApi(self._client())
        try:
            obj = api.get_namespaced_custom_object(
                "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", name,
                _request_timeout=self._timeout_s,
            )  # fmt: skip
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        if not isinstance(obj, dict):
            return None
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        return LwsStatus(int(spec.get("replicas", 0)), int(status.get("readyReplicas", 0)))

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[PodStatus]:
        from kubernetes import client

        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        pod_list = client.CoreV1Api(self._client()).list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=self._timeout_s
        )
        return [_pod_status(pod) for pod in pod_list.items]

    def warning_events(self, namespace: str, object_names: Collection[str]) -> list[ClusterEvent]:
        from kubernetes import client

        names = set(object_names)
        event_list = client.CoreV1Api(self._client()).list_namespaced_event(
            namespace, field_selector="type=Warning", _request_timeout=self._timeout_s
        )
        return [
            ClusterEvent(e.involved_object.name, e.reason or "", e.message or "")
            for e in event_list.items
            if e.involved_object.name is not None and e.involved_object.name in names
        ]

    def pvc_exists(self, namespace: str, name: str) -> bool:
        from kubernetes import client

        try:
            client.CoreV1Api(self._client()).read_namespaced_persistent_volume_claim(
                name, namespace, _request_timeout=self._timeout_s
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()  # type: ignore[no-untyped-call]
                self._api = None


def _pod_status(pod: V1Pod) -> PodStatus:
    status = pod.status
    name = (pod.metadata.name if pod.metadata else None) or ""
    if status is None:
        return PodStatus(name=name, phase="Unknown")
    conditions = {c.type: c for c in status.conditions or []}
    ready = conditions.get("Ready")
    scheduled = conditions.get("PodScheduled")
    unschedulable = ""
    if scheduled is not None and scheduled.status == "False":
        unschedulable = scheduled.message or scheduled.reason or "unschedulable"
    problems = []
    for container in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        waiting = container.state.waiting if container.state else None
        if waiting is None or waiting.reason in (None, "ContainerCreating", "PodInitializing"):
            continue
        last = container.last_state.terminated if container.last_state else None
        last_exit = f"{last.reason or 'Error'}, exit code {last.exit_code}" if last else ""
        problems.append(
            ContainerProblem(
                container=container.name,
                reason=waiting.reason,
                message=waiting.message or "",
                restarts=container.restart_count or 0,
                last_exit=last_exit,
            )
        )
    return PodStatus(
        name=name,
        phase=status.phase or "Unknown",
        ready=ready is not None and ready.status == "True",
        unschedulable=unschedulable,
        problems=tuple(problems),
    )


# --- from a snapshot to a phase ---------------------------------------------------------------

_PVC_NOT_FOUND = re.compile(r'persistentvolumeclaim "([^"]+)" not found')
_IMAGE_PULL_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
)


def model_url(service: str, namespace: str) -> str:
    """The model's address inside the cluster: its Service balances over the group leaders."""
    return f"http://{service}.{namespace}.svc.cluster.local:{ENGINE_PORT}"


def diagnose(spec: DeploymentSpec, namespace: str, snapshot: ClusterSnapshot) -> DeploymentState:
    """The phase of a model's deployment, with a message that says what to do about a failure."""
    lws_name = k8s_name(spec.name, spec.model_id)
    ready = snapshot.lws.ready_replicas if snapshot.lws else 0
    endpoints: tuple[Endpoint, ...] = ()
    if ready > 0:
        svc = service_name(lws_name)
        endpoints = (Endpoint(instance_id=svc, url=model_url(svc, namespace)),)

    def failed(reason: str, message: str) -> DeploymentState:
        return DeploymentState(Phase.FAILED, ready, endpoints, message, reason)

    pending = [pod for pod in snapshot.pods if pod.phase == "Pending" and not pod.ready]
    pending_names = {pod.name for pod in pending}
    scheduler_texts = [(pod.name, pod.unschedulable) for pod in pending if pod.unschedulable]
    scheduler_texts += [
        (e.object_name, e.message) for e in snapshot.events if e.object_name in pending_names
    ]
    missing = [m.group(1) for _, text in scheduler_texts if (m := _PVC_NOT_FOUND.search(text))]
    if not snapshot.pvc_exists or spec.pvc.name in missing:
        return failed(
            "PvcNotFound",
            f"PVC '{spec.pvc.name}' not found in namespace '{namespace}': create it and put "
            f"the weights at {spec.pvc.path}",
        )
    for pod in snapshot.pods:
        for problem in pod.problems:
            if problem.reason in _IMAGE_PULL_REASONS:
                return failed(
                    "ImagePullError",
                    f"pod {pod.name} cannot pull the image of container {problem.container} "
                    f"({problem.reason}: {problem.message or 'no details'}): check the image "
                    "name (AIF_ENGINE_IMAGE overrides the presets') and the nodes' access to "
                    "its registry",
                )
            if problem.reason == "CrashLoopBackOff":
                last = f", last exit: {problem.last_exit}" if problem.last_exit else ""
                return failed(
                    "EngineCrashed",
                    f"container {problem.container} of pod {pod.name} keeps crashing "
                    f"({problem.restarts} restarts{last}): see `kubectl logs -n {namespace} "
                    f"{pod.name} -c {problem.container} --previous`",
                )
    needle = f"Insufficient {spec.resource_type}"
    for pod_name, text in scheduler_texts:
        if needle in text:
            return failed(
                "InsufficientAccelerators",
                f"pod {pod_name} cannot be scheduled, not enough free {spec.resource_type} "
                f"({text.strip()}): free accelerators, add nodes, or lower the model's instances",
            )
    if snapshot.lws is None:
        return DeploymentState(Phase.PROGRESSING, 0, (), f"LeaderWorkerSet {lws_name} not found")
    if ready >= spec.replicas:
        return DeploymentState(Phase.READY, ready, endpoints)
    message = f"{ready} of {spec.replicas} instances ready"
    hint = _progress_hint(snapshot.pods)
    return DeploymentState(Phase.PROGRESSING, ready, endpoints, f"{message}{hint}")


def _progress_hint(pods: Collection[PodStatus]) -> str:
    for pod in pods:
        if pod.ready:
            continue
        if pod.unschedulable:
            return f"; pod {pod.name} is not scheduled yet: {pod.unschedulable}"
        if pod.problems:
            return f"; pod {pod.name}: {pod.problems[0].reason}"
        if pod.phase == "Running":
            return f"; pod {pod.name} is loading the model"
    return ""


__all__ = [
    "ClusterEvent",
    "ClusterObserver",
    "ClusterSnapshot",
    "ContainerProblem",
    "KubernetesObserver",
    "LwsStatus",
    "PodStatus",
    "diagnose",
    "model_url",
]
