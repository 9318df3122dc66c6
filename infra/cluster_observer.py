"""What a model's deployment looks like in the cluster, read with as few API calls as it takes.

A :class:`ClusterObserver` reports the LeaderWorkerSet (its ``spec.replicas`` and
``metadata.generation``, ``status.readyReplicas``/``updatedReplicas`` and the
``UpdateInProgress`` condition), the model's pods (uid, IP, whether the leader of its group,
its template revision, scheduling, container waits and terminations), the warning events of
given pods by uid, and the weights' PVC; it deletes a group's pods to move the group off a
quarantined node. :class:`KubernetesObserver` reads them with the official client. Telling a
phase from them is left to :mod:`infra.diagnosis`, deciding when to read to
:mod:`infra.model_watch`, the names of the objects to :mod:`infra.manifests`.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, V1Pod

# Labels LWS puts on every pod of a group.
GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
REVISION_LABEL = "leaderworkerset.sigs.k8s.io/template-revision-hash"
# Where an in-cluster pod finds its own namespace.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# --- what the cluster shows --------------------------------------------------------------------


@dataclass(frozen=True)
class LwsStatus:
    replicas: int  # spec.replicas: what the cluster was last told
    ready_replicas: int  # groups ready, updated or not
    # Groups on the current template; None where a status does not report it.
    updated_replicas: int | None = None
    generation: int = 0  # metadata.generation: bumped by every change of the spec
    update_in_progress: bool = False  # the UpdateInProgress condition is True


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
    uid: str = ""
    ip: str = ""
    leader: bool = True  # worker index 0: the pod that serves the group's API
    revision: str = ""  # the group's template revision (LWS label)
    scheduled: bool = True  # False while the PodScheduled condition is False
    terminating: bool = False  # deletionTimestamp set
    # The last termination of any container, e.g. "vllm: Error, exit code 1".
    last_termination: str = ""
    container: str = ""  # the first container's name, for `kubectl logs -c`
    node: str = ""  # spec.nodeName, once scheduled
    # What the last terminated container left: its log's tail (FallbackToLogsOnError).
    termination_message: str = ""


@dataclass(frozen=True)
class ClusterEvent:
    object_name: str
    reason: str
    message: str
    object_uid: str = ""


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

    def warning_events(self, namespace: str, pod_uids: Collection[str]) -> list[ClusterEvent]:
        """Warning events about the pods with these uids (not older pods of the same name)."""
        ...

    def pvc_exists(self, namespace: str, name: str) -> bool: ...

    def delete_pods(self, namespace: str, names: Collection[str]) -> None:
        """Delete these pods (gracefully); a pod already gone is no error."""
        ...

    def peer_exists(self, pod_name: str) -> bool | None:
        """Whether a pod of the control plane (another executor) exists; None: cannot tell."""
        ...

    def close(self) -> None: ...


class KubernetesApi:
    """The official client's ``ApiClient``, configured at first use (in-cluster config, else
    KUBECONFIG) and shared by the threads of its reader; ``close`` lets the next use start over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._api: ApiClient | None = None

    def client(self) -> ApiClient:
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

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()  # type: ignore[no-untyped-call]
                self._api = None


class KubernetesObserver:
    """:class:`ClusterObserver` over the official client: in-cluster config, else KUBECONFIG.

    The client is imported and configured at the first read, so building a deployer needs
    neither a cluster nor the package.
    """

    def __init__(self, request_timeout_s: float = 10.0) -> None:
        self._timeout_s = request_timeout_s
        self._api = KubernetesApi()

    def _client(self) -> ApiClient:
        return self._api.client()

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
        return _lws_status(obj) if isinstance(obj, dict) else None

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[PodStatus]:
        from kubernetes import client

        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        pod_list = client.CoreV1Api(self._client()).list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=self._timeout_s
        )
        return [_pod_status(pod) for pod in pod_list.items]

    def warning_events(self, namespace: str, pod_uids: Collection[str]) -> list[ClusterEvent]:
        """One list per pod, selected on the server by its uid: never the whole namespace."""
        from kubernetes import client

        api = client.CoreV1Api(self._client())
        found = []
        for uid in pod_uids:
            event_list = api.list_namespaced_event(
                namespace,
                field_selector=f"type=Warning,involvedObject.uid={uid}",
                _request_timeout=self._timeout_s,
            )
            found += [
                ClusterEvent(e.involved_object.name or "", e.reason or "", e.message or "", uid)
                for e in event_list.items
            ]
        return found

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

    def delete_pods(self, namespace: str, names: Collection[str]) -> None:
        from kubernetes import client

        api = client.CoreV1Api(self._client())
        for name in names:
            try:
                api.delete_namespaced_pod(name, namespace, _request_timeout=self._timeout_s)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise

    def peer_exists(self, pod_name: str) -> bool | None:
        from kubernetes import client

        if not NAMESPACE_FILE.is_file():
            return None  # not in a cluster: the control plane's pods cannot be named
        namespace = NAMESPACE_FILE.read_text(encoding="utf-8").strip()
        try:
            client.CoreV1Api(self._client()).read_namespaced_pod(
                pod_name, namespace, _request_timeout=self._timeout_s
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status == 403:
                return None
            raise
        return True

    def close(self) -> None:
        self._api.close()


def _lws_status(obj: dict[str, Any]) -> LwsStatus:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return LwsStatus(
        replicas=int(spec.get("replicas", 0)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        updated_replicas=int(status.get("updatedReplicas", 0)),
        generation=int((obj.get("metadata") or {}).get("generation", 0)),
        update_in_progress=conditions.get("UpdateInProgress") == "True",
    )


def _termination(name: str, terminated: Any) -> str:
    return f"{name}: {terminated.reason or 'Error'}, exit code {terminated.exit_code}"


def _container_problems(
    statuses: list[Any],
) -> tuple[tuple[ContainerProblem, ...], str, str]:
    """Waiting containers worth reporting, and the latest termination of any container (as a
    line, and the message it left)."""
    problems, last_termination, message = [], "", ""
    for container in statuses:
        last = container.last_state.terminated if container.last_state else None
        now = container.state.terminated if container.state else None
        ended = now or last
        if ended is not None:
            last_termination = _termination(container.name, ended)
            message = ended.message or ""
        waiting = container.state.waiting if container.state else None
        if waiting is None or waiting.reason in (None, "ContainerCreating", "PodInitializing"):
            continue
        last_exit = _termination(container.name, last).partition(": ")[2] if last else ""
        problems.append(
            ContainerProblem(
                container=container.name,
                reason=waiting.reason,
                message=waiting.message or "",
                restarts=container.restart_count or 0,
                last_exit=last_exit,
            )
        )
    return tuple(problems), last_termination, message


def _pod_status(pod: V1Pod) -> PodStatus:
    status, meta = pod.status, pod.metadata
    name = (meta.name if meta else None) or ""
    if status is None:
        return PodStatus(name=name, phase="Unknown")
    labels = (meta.labels if meta else None) or {}
    conditions = {c.type: c for c in status.conditions or []}
    ready = conditions.get("Ready")
    scheduled = conditions.get("PodScheduled")
    unscheduled = scheduled is not None and scheduled.status == "False"
    unschedulable = ""
    if scheduled is not None and unscheduled:
        unschedulable = scheduled.message or scheduled.reason or "unschedulable"
    statuses = [*(status.init_container_statuses or []), *(status.container_statuses or [])]
    problems, last_termination, message = _container_problems(statuses)
    containers = pod.spec.containers if pod.spec else []
    return PodStatus(
        name=name,
        phase=status.phase or "Unknown",
        ready=ready is not None and ready.status == "True",
        unschedulable=unschedulable,
        problems=problems,
        uid=(meta.uid if meta else None) or "",
        ip=status.pod_ip or "",
        leader=labels.get(WORKER_INDEX_LABEL, "0") == "0",
        revision=labels.get(REVISION_LABEL, ""),
        scheduled=not unscheduled,
        terminating=meta is not None and meta.deletion_timestamp is not None,
        last_termination=last_termination,
        container=containers[0].name if containers else "",
        node=(pod.spec.node_name if pod.spec else None) or "",
        termination_message=message,
    )


__all__ = [
    "GROUP_INDEX_LABEL",
    "REVISION_LABEL",
    "WORKER_INDEX_LABEL",
    "ClusterEvent",
    "ClusterObserver",
    "ClusterSnapshot",
    "ContainerProblem",
    "KubernetesObserver",
    "LwsStatus",
    "PodStatus",
]
