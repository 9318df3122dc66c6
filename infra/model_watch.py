"""When to read a model from the cluster, and what to remember between reads.

The model-job-executor calls ``apply`` for every model on each pass, and passes come every
50 ms while any model progresses. Reading the cluster that often would cost tens of API calls
per second per model for the half hour a large model loads, so a :class:`ModelWatch` keeps the
last observed state and reads again only when it is due (:func:`observe_interval_s`): soon
after a change, then less and less often as a load drags on, and every
:data:`READY_INTERVAL_S` once the model serves. An update that just finished, a changed spec,
or a failure makes the next read due at once.

A read (:func:`read_snapshot`) costs the LeaderWorkerSet and one pod list; only when pods wait
for a node, the warning events of those pods (by uid, at most :data:`MAX_EVENT_READS`) and
the weights' PVC (once per load). The watch also keeps the model's :class:`CrashHistory` and
the LWS generation the last update left, so an edit by anyone else (``kubectl scale``,
``kubectl edit``) shows as drift. Reading and telling phases are left to
:mod:`infra.cluster_observer` and :mod:`infra.diagnosis`, acting on drift to the deployer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from domain.deployment import DeploymentState, Phase
from infra.cluster_observer import ClusterObserver, ClusterSnapshot, LwsStatus
from infra.diagnosis import CrashHistory
from infra.manifests import LWS_NAME_LABEL

# While loading: the first reads this often, then a fraction of the load's age, up to a cap.
MIN_INTERVAL_S = 2.0
AGE_FRACTION = 0.05
MAX_LOADING_INTERVAL_S = 30.0
# Once every instance serves: how soon a lost instance or a hand edit is noticed.
READY_INTERVAL_S = 10.0
# Pods waiting for a node whose events are read in one observation.
MAX_EVENT_READS = 2


def observe_interval_s(load_age_s: float, ready: bool) -> float:
    """How long a state stays good: short at first, longer as a load drags on."""
    if ready:
        return READY_INTERVAL_S
    return min(MAX_LOADING_INTERVAL_S, max(MIN_INTERVAL_S, load_age_s * AGE_FRACTION))


def read_snapshot(
    observer: ClusterObserver, namespace: str, lws_name: str, pvc_name: str, pvc_known: bool
) -> ClusterSnapshot:
    """The LWS and its pods; events and the PVC only while pods wait for a node."""
    lws = observer.leader_worker_set(namespace, lws_name)
    pods = tuple(observer.pods(namespace, {LWS_NAME_LABEL: lws_name})) if lws else ()
    waiting = [p for p in pods if not p.scheduled and not p.terminating and p.uid]
    events = observer.warning_events(namespace, [p.uid for p in waiting[:MAX_EVENT_READS]])
    pvc_exists = True
    if waiting and not pvc_known:
        pvc_exists = observer.pvc_exists(namespace, pvc_name)
    return ClusterSnapshot(lws, pods, tuple(events) if waiting else (), pvc_exists)


@dataclass
class ModelWatch:
    """What one model's observations remember between passes."""

    key: tuple[str, int]  # (spec hash, replicas) being observed
    load_started_at: float
    read_at: float = -math.inf
    due_at: float = -math.inf
    state: DeploymentState | None = None
    history: CrashHistory = field(default_factory=CrashHistory)
    pvc_seen: bool = False
    # The LWS generation right after our last update; a later one is someone else's edit.
    baseline_generation: int | None = None
    # Device faults already reported: (pod uid, termination message).
    faults_seen: set[tuple[str, str]] = field(default_factory=set)

    def restart(self, key: tuple[str, int], now: float) -> None:
        """A new desired spec: a new load, read at once."""
        self.key, self.load_started_at = key, now
        self.due_at = -math.inf
        self.pvc_seen = False

    def after_update(self) -> None:
        """Our update just finished: read at once, and take the next generation as ours."""
        self.due_at = -math.inf
        self.baseline_generation = None

    def due(self, now: float) -> bool:
        return now >= self.due_at

    def record(self, state: DeploymentState, snapshot: ClusterSnapshot, now: float) -> None:
        self.state, self.read_at = state, now
        if snapshot.pvc_exists and any(not p.scheduled for p in snapshot.pods):
            self.pvc_seen = True
        if state.phase is Phase.FAILED:
            self.due_at = -math.inf  # the executor backs off; its next call reads afresh
            return
        ready = state.phase is Phase.READY
        if ready:
            self.load_started_at = now
        self.due_at = now + observe_interval_s(now - self.load_started_at, ready)

    def drifted(self, lws: LwsStatus | None, applied_replicas: int) -> str:
        """Why the cluster no longer holds what was applied, or "" when it does."""
        if lws is None:
            return "LeaderWorkerSet missing"
        if self.baseline_generation is None:
            self.baseline_generation = lws.generation
        if lws.replicas != applied_replicas:
            return f"spec.replicas is {lws.replicas}, {applied_replicas} applied"
        if lws.generation > self.baseline_generation:
            return f"spec edited (generation {self.baseline_generation} -> {lws.generation})"
        return ""


__all__ = [
    "MAX_EVENT_READS",
    "READY_INTERVAL_S",
    "ModelWatch",
    "observe_interval_s",
    "read_snapshot",
]
