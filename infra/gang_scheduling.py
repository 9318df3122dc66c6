"""Gang scheduling with Volcano: what a model's objects carry so that each group is one gang.

With ``ClusterConfig.gang_scheduling == "volcano"`` an instance that spans nodes (a 70B model
on nodes of few cards) must get all of its pods at once or none: a group holding half its
cards while it waits for the rest blocks other models and never serves.

The PodGroups are LeaderWorkerSet's, not aif's. A pod template is shared by every group of a
set, so a pod cannot name its own group's PodGroup from the template; LWS (v0.7 and later,
with ``gangSchedulingManagement.schedulerProvider: volcano`` in its controller's
configuration) does it: its pod webhook annotates every pod of group *i* with
``scheduling.k8s.io/group-name: <lws>-<i>-<revision>``, and when the group's leader pod is
created it creates that ``scheduling.volcano.sh/v1beta1`` PodGroup, owned by the leader pod,
with ``minMember`` the group size (the set's ``startupPolicy`` is ``LeaderCreated``),
``minResources`` the requests of the leader plus ``size - 1`` workers, and ``queue`` the set's
``scheduling.volcano.sh/queue-name`` annotation. aif's part is that annotation
(:func:`lws_annotations`) and ``schedulerName`` on the pods (:func:`scheduler_name`), so that
Volcano, not the default scheduler, places them.

:func:`pod_group_preview` computes the PodGroup LWS will create for a rendered set, which
``aif render`` prints as a comment (:func:`preview_comment`): what the gang is made of, never
an object aif applies. Nothing here talks to a cluster.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import yaml

from domain.settings import ClusterConfig

VOLCANO_SCHEDULER = "volcano"
VOLCANO_DEFAULT_QUEUE = "default"
VOLCANO_QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"
POD_GROUP_API_VERSION = "scheduling.volcano.sh/v1beta1"
# Set on every pod by LWS's pod webhook when its Volcano provider is on.
POD_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"

# Quantity suffixes and their factors: binary (1Gi = 2**30), decimal (1k = 1000, 1m = 1/1000).
_SUFFIXES = {f"{p}i": Fraction(2 ** (10 * n)) for n, p in enumerate("KMGTPE", start=1)}
_SUFFIXES |= {p: Fraction(10 ** (3 * n)) for n, p in enumerate("kMGTPE", start=1)}
_SUFFIXES |= {"": Fraction(1), "m": Fraction(1, 10**3), "u": Fraction(1, 10**6)}
_SUFFIXES["n"] = Fraction(1, 10**9)


def gang_scheduled(cluster: ClusterConfig) -> bool:
    """Whether the model's groups are gang-scheduled by Volcano."""
    return cluster.gang_scheduling == "volcano"


def scheduler_name(cluster: ClusterConfig) -> str:
    """The pods' ``schedulerName``: the configured one, else Volcano's when gang-scheduled."""
    if gang_scheduled(cluster):
        return cluster.scheduler_name or VOLCANO_SCHEDULER
    return cluster.scheduler_name


def queue(cluster: ClusterConfig) -> str:
    """The Volcano queue of the model's PodGroups (``aif:volcanoQueue``, else ``default``)."""
    return cluster.volcano_queue or VOLCANO_DEFAULT_QUEUE


def lws_annotations(cluster: ClusterConfig) -> dict[str, str]:
    """What the LeaderWorkerSet carries for LWS's Volcano provider: the PodGroups' queue."""
    return {VOLCANO_QUEUE_ANNOTATION: queue(cluster)} if gang_scheduled(cluster) else {}


# --- the PodGroup LWS creates --------------------------------------------------------------------


def _parse(quantity: str) -> tuple[Fraction, str]:
    """A Kubernetes quantity (``64Gi``, ``500m``, ``8``) as a number and its suffix."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if not quantity.endswith(suffix):
            continue
        try:
            return Fraction(quantity[: len(quantity) - len(suffix)]) * _SUFFIXES[suffix], suffix
        except ValueError:
            continue
    raise ValueError(f"not a Kubernetes quantity: {quantity!r}")


def _format(value: Fraction, suffix: str) -> str:
    """``value`` in ``suffix``'s unit when whole there, else in plain units or thousandths."""
    scaled = value / _SUFFIXES[suffix]
    if scaled.denominator == 1:
        return f"{scaled.numerator}{suffix}"
    if value.denominator == 1:
        return str(value.numerator)
    return f"{math.ceil(value * 1000)}m"


class _Requests:
    """Resource requests summed as Kubernetes counts them, each kept in the unit it came in."""

    def __init__(self) -> None:
        self.values: dict[str, Fraction] = {}
        self.suffixes: dict[str, str] = {}

    def _add(self, name: str, value: Fraction, suffix: str, *, keep_max: bool) -> None:
        # Mixed units (1Gi and 512Mi) are written in plain units.
        self.suffixes[name] = suffix if self.suffixes.get(name, suffix) == suffix else ""
        current = self.values.get(name, Fraction(0))
        self.values[name] = max(current, value) if keep_max else current + value

    def merge(self, requests: dict[str, Any], *, keep_max: bool = False) -> None:
        for name, quantity in requests.items():
            value, suffix = _parse(str(quantity))
            self._add(name, value, suffix, keep_max=keep_max)

    def add(self, other: _Requests, times: int) -> None:
        for name, value in other.values.items():
            self._add(name, value * times, other.suffixes[name], keep_max=False)

    def as_quantities(self) -> dict[str, str]:
        return {name: _format(v, self.suffixes[name]) for name, v in self.values.items()}


def _pod_requests(pod_spec: dict[str, Any]) -> _Requests:
    """A pod's requests: its containers' sum, or its largest init container where larger."""
    total = _Requests()
    for container in pod_spec.get("containers", []):
        total.merge(container.get("resources", {}).get("requests", {}))
    for init in pod_spec.get("initContainers", []):
        total.merge(init.get("resources", {}).get("requests", {}), keep_max=True)
    return total


def pod_group_preview(lws: dict[str, Any], cluster: ClusterConfig) -> dict[str, Any] | None:
    """The PodGroup LWS's Volcano provider creates for each group of ``lws``; None when the
    model is not gang-scheduled. Its name, ``<lws>-<group index>-<revision>``, is LWS's."""
    if not gang_scheduled(cluster):
        return None
    lwt = lws["spec"]["leaderWorkerTemplate"]
    size: int = lwt["size"]
    total = _pod_requests(lwt["leaderTemplate"]["spec"])
    if size > 1:
        total.add(_pod_requests(lwt["workerTemplate"]["spec"]), size - 1)
    leader_created = lws["spec"].get("startupPolicy", "LeaderCreated") == "LeaderCreated"
    return {
        "apiVersion": POD_GROUP_API_VERSION,
        "kind": "PodGroup",
        "metadata": {"namespace": lws["metadata"]["namespace"]},
        "spec": {
            "minMember": size if leader_created else 1,
            "minResources": total.as_quantities(),
            "queue": lws["metadata"]["annotations"][VOLCANO_QUEUE_ANNOTATION],
        },
    }


def preview_comment(pod_group: dict[str, Any], lws_name: str) -> str:
    """``pod_group`` as YAML comment lines, under a header saying who creates it."""
    size = pod_group["spec"]["minMember"]
    binding = (
        f"Volcano binds none of the group's {size} pods until all of them fit"
        if size > 1
        else "One pod per group: the PodGroup only gives it its queue"
    )
    header = [
        "Gang scheduling: for each group, LWS's Volcano provider creates this PodGroup, owned by",
        "the group's leader pod, and names it on the group's pods:",
        f"{POD_GROUP_ANNOTATION}: {lws_name}-<group index>-<revision>.",
        f"{binding}.",
    ]
    body = yaml.safe_dump(pod_group, sort_keys=False).splitlines()
    return "".join(f"# {line}\n" for line in [*header, *body])


__all__ = [
    "POD_GROUP_ANNOTATION",
    "POD_GROUP_API_VERSION",
    "VOLCANO_DEFAULT_QUEUE",
    "VOLCANO_QUEUE_ANNOTATION",
    "VOLCANO_SCHEDULER",
    "gang_scheduled",
    "lws_annotations",
    "pod_group_preview",
    "preview_comment",
    "queue",
    "scheduler_name",
]
