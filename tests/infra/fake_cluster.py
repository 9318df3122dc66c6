"""A fake cluster that produces the states a real one does, as a ClusterObserver.

It plays the parts aif cannot see directly: the LWS controller (one group per replica, its
leader named ``<lws>-<i>``; on a container restart, with ``RecreateGroupOnPodRestart``, it
deletes the group and makes it again under the same names with new uids, so ``restartCount``
stays 0), the scheduler (``PodScheduled=False`` and a ``FailedScheduling`` event, which
outlives the pod), rolling updates (``updatedReplicas`` below ``replicas`` with
``UpdateInProgress``), other field managers (``kubectl scale``), terminating pods after a
delete, and the control plane's own pods (for stack-lock holders). Every read is counted.
Pods land on ``nodes`` in turn, skipping those the applied affinity excludes (``avoid``); a
deleted pod is made again, as LWS does after a delete, on a node the affinity allows.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

from infra.cluster_observer import ClusterEvent, LwsStatus, PodStatus
from infra.manifests import LWS_NAME_LABEL, label_value

NAMESPACE = "aif-models"
_uids = itertools.count(1)


def _uid() -> str:
    return f"uid-{next(_uids)}"


@dataclass
class FakeLws:
    model_id: str
    replicas: int
    generation: int = 1
    revision: str = "rev-1"
    updated: int | None = None  # groups on the current revision; None: all of them


@dataclass
class FakeCluster:
    """Models' objects in one namespace; ``auto_ready`` makes new groups ready at once."""

    auto_ready: bool = True
    lws: dict[str, FakeLws] = field(default_factory=dict)
    pod_map: dict[str, PodStatus] = field(default_factory=dict)
    pod_model: dict[str, str] = field(default_factory=dict)
    events: list[ClusterEvent] = field(default_factory=list)
    pvcs: set[str] = field(default_factory=lambda: {"release-models"})
    # The control plane's pods (lock holders); None: this observer cannot tell.
    peers: set[str] | None = field(default_factory=set)
    reads: Counter[str] = field(default_factory=Counter)
    closed: bool = False
    fail_reads: Exception | None = None
    nodes: list[str] = field(default_factory=lambda: ["node-a", "node-b", "node-c"])
    # What the LWS's node affinity keeps its pods off (the last applied avoidNodes).
    avoid: set[str] = field(default_factory=set)
    deleted: list[str] = field(default_factory=list)

    # --- the ClusterObserver protocol ------------------------------------------------------

    def _read(self, kind: str) -> None:
        self.reads[kind] += 1
        if self.fail_reads is not None:
            raise self.fail_reads

    def leader_worker_set(self, namespace: str, name: str) -> LwsStatus | None:
        assert namespace == NAMESPACE
        self._read("lws")
        lws = self.lws.get(name)
        if lws is None:
            return None
        leaders = [p for n, p in self.pod_map.items() if n in self._leaders(name)]
        ready = sum(1 for p in leaders if p.ready)
        updated = lws.replicas if lws.updated is None else lws.updated
        return LwsStatus(
            lws.replicas, ready, updated, lws.generation, update_in_progress=updated < lws.replicas
        )

    def pods(self, namespace: str, labels: Mapping[str, str]) -> list[PodStatus]:
        self._read("pods")
        if LWS_NAME_LABEL in labels:
            names = self._group_pods(labels[LWS_NAME_LABEL])
        else:
            model = labels["xds/modelId"]
            names = [n for n, m in self.pod_model.items() if label_value(m) == model]
        return [self.pod_map[n] for n in sorted(names) if n in self.pod_map]

    def warning_events(self, namespace: str, pod_uids: Collection[str]) -> list[ClusterEvent]:
        for _ in pod_uids:
            self._read("events")
        return [e for e in self.events if e.object_uid in pod_uids]

    def pvc_exists(self, namespace: str, name: str) -> bool:
        self._read("pvc")
        return name in self.pvcs

    def delete_pods(self, namespace: str, names: Collection[str]) -> None:
        """LWS makes the group again at once: new uids, placed where the affinity allows."""
        assert namespace == NAMESPACE
        for name in names:
            self.deleted.append(name)
            old = self.pod_map.pop(name, None)
            if old is not None:
                self.pod_map[name] = self._new_leader(name, old.revision)

    def peer_exists(self, pod_name: str) -> bool | None:
        self._read("peer")
        return None if self.peers is None else pod_name in self.peers

    def close(self) -> None:
        self.closed = True

    # --- the LWS controller ------------------------------------------------------------------

    def _leaders(self, lws_name: str) -> list[str]:
        lws = self.lws.get(lws_name)
        return [f"{lws_name}-{i}" for i in range(lws.replicas)] if lws else []

    def _group_pods(self, lws_name: str) -> list[str]:
        return [n for n in self.pod_map if n.rsplit("-", 1)[0] == lws_name]

    def apply(self, lws_name: str, model_id: str, replicas: int) -> None:
        """What `pulumi up` does: create or update the LWS; the controller makes groups."""
        lws = self.lws.get(lws_name)
        if lws is None:
            self.lws[lws_name] = FakeLws(model_id, replicas)
        elif lws.replicas != replicas:
            lws.replicas, lws.generation = replicas, lws.generation + 1
        self._reconcile(lws_name)

    def _reconcile(self, lws_name: str) -> None:
        lws = self.lws[lws_name]
        wanted = set(self._leaders(lws_name))
        for name in self._group_pods(lws_name):
            if name not in wanted:
                del self.pod_map[name]
        for name in sorted(wanted - set(self.pod_map)):
            self.pod_model[name] = lws.model_id
            self.pod_map[name] = self._new_leader(name, lws.revision)

    def _place(self) -> str:
        allowed = [n for n in self.nodes if n not in self.avoid]
        return allowed[len(self.pod_map) % len(allowed)] if allowed else ""

    def _new_leader(self, name: str, revision: str) -> PodStatus:
        node = self._place()
        pod = PodStatus(name, "Running", uid=_uid(), revision=revision, container="vllm",
                        node=node)  # fmt: skip
        if self.auto_ready:
            pod = replace(pod, ready=True, ip=f"10.0.0.{len(self.pod_map) + 10}")
        return pod

    def delete(self, lws_name: str) -> None:
        """What `pulumi destroy` does with skipAwait: the LWS goes, its pods terminate later."""
        self.lws.pop(lws_name, None)
        for name in self._group_pods(lws_name):
            self.pod_map[name] = replace(self.pod_map[name], terminating=True, ready=False)

    def terminated(self) -> None:
        """The terminating pods are gone (their grace period ended)."""
        for name in [n for n, p in self.pod_map.items() if p.terminating]:
            del self.pod_map[name]

    def set_pod(self, name: str, **changes: object) -> PodStatus:
        self.pod_map[name] = replace(self.pod_map[name], **changes)  # type: ignore[arg-type]
        return self.pod_map[name]

    def ready(self, name: str) -> None:
        self.set_pod(name, ready=True, ip="10.0.1.7", phase="Running", scheduled=True)

    def crash(self, name: str) -> None:
        """A container restarts; LWS deletes the group and makes it again: new uid, 0 restarts
        (on the same node: the scheduler sees it free again)."""
        old = self.pod_map[name]
        self.pod_map[name] = PodStatus(
            name, "Running", uid=_uid(), revision=old.revision, container=old.container,
            node=old.node,
        )  # fmt: skip

    def unschedulable(self, name: str, message: str) -> None:
        pod = self.set_pod(
            name, phase="Pending", ready=False, ip="", scheduled=False, unschedulable=message
        )
        self.events.append(ClusterEvent(name, "FailedScheduling", message, pod.uid))

    def recreate(self, name: str, **changes: object) -> PodStatus:
        """The pod is made again under its name (new uid); old events stay listed."""
        self.pod_map[name] = replace(self.pod_map[name], uid=_uid(), **changes)  # type: ignore[arg-type]
        return self.pod_map[name]

    def roll_out(self, lws_name: str, updated: int) -> None:
        lws = self.lws[lws_name]
        lws.generation += 1
        lws.revision = f"rev-{lws.generation}"
        lws.updated = updated

    def scale_by_hand(self, lws_name: str, replicas: int) -> None:
        """`kubectl scale`: another field manager now owns spec.replicas."""
        lws = self.lws[lws_name]
        lws.replicas, lws.generation = replicas, lws.generation + 1
        self._reconcile(lws_name)
