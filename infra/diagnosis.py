"""From what the cluster shows of a model to its phase, instances and an actionable message.

:func:`diagnose` turns a :class:`~infra.cluster_observer.ClusterSnapshot` into a
:class:`~domain.deployment.DeploymentState`: one endpoint per ready group leader
(``http://<pod IP>:8000``, so the gateway routes, retries and measures per instance), ``READY``
only when the LeaderWorkerSet runs the desired replicas, all ready *and* on the current
template (``updatedReplicas``, no ``UpdateInProgress``), and a failure with what to do about
it: a missing PVC, an image that cannot be pulled, a crash loop, too few free accelerators.

Scheduling failures are read only for pods whose ``PodScheduled`` condition is False, and
events only by such a pod's uid: events outlive pods (about an hour) and LWS recreates pods
under the same names, so a scheduled pod that pulls a large image is never failed on its
predecessor's ``FailedScheduling``.

Crash loops. With ``RecreateGroupOnPodRestart`` the LWS controller deletes a group as soon as
one of its containers restarts, so ``restartCount`` stays 0 and ``CrashLoopBackOff`` rarely
shows. :class:`CrashHistory` tells them from history instead: a group leader that comes back
under its name with a new uid, on the same template revision, without its predecessor ever
having been ready, is a recreation after a crash; :data:`CRASH_LOOP_RECREATIONS` of them make
the model ``FAILED`` with ``EngineCrashed``, the last termination seen, and where the logs are.
A crash loop whose recreations all ran on one node names it (:attr:`CrashLoop.node`): the
deployer may suspect the node rather than the model.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from domain.deployment import DeploymentSpec, DeploymentState, Phase
from domain.records import Endpoint
from infra.cluster_observer import ClusterSnapshot, PodStatus
from infra.manifests import ENGINE_PORT, k8s_name

# Recreations of one group, before it was ever ready, that make a crash loop.
CRASH_LOOP_RECREATIONS = 3

_PVC_NOT_FOUND = re.compile(r'persistentvolumeclaim "([^"]+)" not found')
_IMAGE_PULL_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
)


def instance_url(pod_ip: str) -> str:
    """Where one instance (its group leader's API server) answers inside the cluster."""
    return f"http://{pod_ip}:{ENGINE_PORT}"


def endpoints(pods: Collection[PodStatus]) -> tuple[Endpoint, ...]:
    """One endpoint per ready, running group leader with an IP, named after the pod."""
    serving = [p for p in pods if p.leader and p.ready and p.ip and not p.terminating]
    return tuple(
        Endpoint(instance_id=p.name, url=instance_url(p.ip))
        for p in sorted(serving, key=lambda p: p.name)
    )


# --- crash loops ---------------------------------------------------------------------------------


@dataclass
class _Leader:
    uid: str
    revision: str
    was_ready: bool
    last_termination: str
    node: str = ""


@dataclass(frozen=True)
class CrashLoop:
    pod: str
    container: str
    recreations: int
    last_termination: str
    node: str = ""  # the one node every crashed predecessor ran on, when they shared one


class CrashHistory:
    """Recreations of a model's group leaders, counted across observations."""

    def __init__(self) -> None:
        self._leaders: dict[str, _Leader] = {}
        self._recreations: dict[str, int] = {}
        self._last: dict[str, str] = {}
        self._nodes: dict[str, set[str]] = {}

    def observe(self, pods: Collection[PodStatus]) -> CrashLoop | None:
        """Record the leaders seen now; the group that crash-loops, if one does."""
        worst: CrashLoop | None = None
        for pod in pods:
            if not pod.leader or not pod.uid:
                continue
            before = self._leaders.get(pod.name)
            if before is not None and before.uid != pod.uid:
                if before.revision == pod.revision and not before.was_ready:
                    self._recreations[pod.name] = self._recreations.get(pod.name, 0) + 1
                    self._nodes.setdefault(pod.name, set()).add(before.node)
                    if before.last_termination:
                        self._last[pod.name] = before.last_termination
                before = None
            if pod.last_termination:
                self._last[pod.name] = pod.last_termination
            was_ready = pod.ready or (before is not None and before.was_ready)
            node = pod.node or (before.node if before is not None else "")
            self._leaders[pod.name] = _Leader(
                pod.uid, pod.revision, was_ready, pod.last_termination, node
            )
            if pod.ready:
                self._recreations.pop(pod.name, None)
                self._nodes.pop(pod.name, None)
            count = self._recreations.get(pod.name, 0)
            if count >= CRASH_LOOP_RECREATIONS and (worst is None or count > worst.recreations):
                nodes = self._nodes.get(pod.name, set())
                one = next(iter(nodes)) if len(nodes) == 1 else ""
                worst = CrashLoop(pod.name, pod.container, count, self._last.get(pod.name, ""), one)
        return worst

    def forgive(self) -> None:
        """Start counting afresh: a reported crash loop needs new evidence to fail again."""
        self._recreations.clear()
        self._nodes.clear()


# --- the phase -----------------------------------------------------------------------------------


def diagnose(
    spec: DeploymentSpec,
    namespace: str,
    snapshot: ClusterSnapshot,
    crash: CrashLoop | None = None,
) -> DeploymentState:
    """The phase of a model's deployment, with a message that says what to do about a failure."""
    lws_name = k8s_name(spec.name, spec.model_id)
    serving = endpoints(snapshot.pods)
    ready = len(serving)

    def failed(reason: str, message: str) -> DeploymentState:
        return DeploymentState(Phase.FAILED, ready, serving, message, reason)

    unscheduled = [p for p in snapshot.pods if not p.scheduled and not p.terminating]
    uids = {p.uid for p in unscheduled}
    scheduler_texts = [(p.name, p.unschedulable) for p in unscheduled if p.unschedulable]
    scheduler_texts += [(e.object_name, e.message) for e in snapshot.events if e.object_uid in uids]
    missing = [m.group(1) for _, text in scheduler_texts if (m := _PVC_NOT_FOUND.search(text))]
    if not snapshot.pvc_exists or spec.pvc.name in missing:
        return failed(
            "PvcNotFound",
            f"PVC '{spec.pvc.name}' not found in namespace '{namespace}': create it and put "
            f"the weights at {spec.pvc.path}",
        )
    problem = _container_failure(snapshot.pods, namespace, crash)
    if problem is not None:
        return failed(*problem)
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
    return _progress(spec, snapshot, ready, serving)


def _container_failure(
    pods: Collection[PodStatus], namespace: str, crash: CrashLoop | None
) -> tuple[str, str] | None:
    for pod in pods:
        for problem in pod.problems:
            if problem.reason in _IMAGE_PULL_REASONS:
                return (
                    "ImagePullError",
                    f"pod {pod.name} cannot pull the image of container {problem.container} "
                    f"({problem.reason}: {problem.message or 'no details'}): check the image "
                    "name (AIF_ENGINE_IMAGE overrides the presets') and the nodes' access to "
                    "its registry",
                )
            if problem.reason == "CrashLoopBackOff":
                last = f", last exit: {problem.last_exit}" if problem.last_exit else ""
                return (
                    "EngineCrashed",
                    f"container {problem.container} of pod {pod.name} keeps crashing "
                    f"({problem.restarts} restarts{last}): see `kubectl logs -n {namespace} "
                    f"{pod.name} -c {problem.container} --previous`",
                )
    if crash is not None:
        last = f"; last exit: {crash.last_termination}" if crash.last_termination else ""
        container = f" -c {crash.container}" if crash.container else ""
        return (
            "EngineCrashed",
            f"the group of pod {crash.pod} was recreated {crash.recreations} times before it "
            f"became ready (its engine exits while loading{last}): see `kubectl logs -n "
            f"{namespace} {crash.pod}{container} -f` as it loads again, and `kubectl get events "
            f"-n {namespace} --field-selector involvedObject.name={crash.pod}`",
        )
    return None


def _progress(
    spec: DeploymentSpec, snapshot: ClusterSnapshot, ready: int, serving: tuple[Endpoint, ...]
) -> DeploymentState:
    lws = snapshot.lws
    assert lws is not None
    updated = lws.replicas if lws.updated_replicas is None else lws.updated_replicas
    rolled_out = updated >= spec.replicas and not lws.update_in_progress
    if lws.replicas == spec.replicas and ready >= spec.replicas and rolled_out:
        return DeploymentState(Phase.READY, ready, serving)
    message = f"{ready} of {spec.replicas} instances ready"
    if not rolled_out:
        message += f", {updated} of {spec.replicas} on the current template (rolling update)"
    hint = _progress_hint(snapshot.pods)
    return DeploymentState(Phase.PROGRESSING, ready, serving, f"{message}{hint}")


def _progress_hint(pods: Collection[PodStatus]) -> str:
    for pod in sorted(pods, key=lambda p: p.name):
        if pod.ready or pod.terminating:
            continue
        if not pod.scheduled:
            return f"; pod {pod.name} is not scheduled yet: {pod.unschedulable or 'waiting'}"
        if pod.problems:
            return f"; pod {pod.name}: {pod.problems[0].reason}"
        if pod.phase == "Pending":
            return f"; pod {pod.name} is starting (pulling the image or copying the weights)"
        if pod.phase == "Running":
            return f"; pod {pod.name} is loading the model"
    return ""


__all__ = [
    "CRASH_LOOP_RECREATIONS",
    "CrashHistory",
    "CrashLoop",
    "diagnose",
    "endpoints",
    "instance_url",
]
