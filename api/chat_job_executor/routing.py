"""The chat-job-executor's in-memory routing table, and the policies that pick an instance.

The table maps a served model name to its status and ready instances. It is rebuilt from the
store (where the model-job-executor records what it observes) on a short interval and on
every local change, so the request path never touches the database. Each instance's live
state (requests in flight, failures, ejection, the load its engine reports) is kept across
rebuilds, keyed by model and URL.

Policies (``routing_policy`` on the model, else ``AIF_ROUTING_POLICY``):

- ``least-outstanding`` (default): the instance with the fewest requests in flight here.
- ``round-robin``: rotate.
- ``load``: the least loaded by what its engine reports (queue length, running sequences, KV
  cache usage), plus what is in flight here since; for engines that export vLLM's metrics.
- ``prefix``: requests with the same session (``x-session-id`` header or OpenAI's ``user``),
  else the same leading prompt characters, go to the same instance (consistent hashing), so
  the engine's prefix cache serves them; with bounded load, so a hot prefix cannot overload one
  instance: an instance already over ``PREFIX_LOAD_FACTOR`` times the mean is passed over.

Every policy returns all available instances, best first: the rest are where a retry goes.
Outlier ejection (an instance that fails repeatedly leaves routing for a while) is kept here
too, as part of each instance's state.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Protocol

from api.chat_job_executor.admission import Gate
from domain.records import ModelRecord, ModelStatus

# Statuses in which a model without a ready instance will have one: its requests wait.
COMING_STATUSES = frozenset(
    {ModelStatus.DEPLOYING, ModelStatus.UPDATING, ModelStatus.ACTIVE, ModelStatus.IDLE}
)
POLICIES = ("least-outstanding", "round-robin", "load", "prefix")
# Points per instance on the hash ring: enough that instances share the ring evenly.
RING_POINTS_PER_INSTANCE = 64
# Consistent hashing with bounded loads (Mirrokni et al.): no instance takes more than this
# times the mean in-flight load; 1.25 keeps most keys at home while capping a hot one.
PREFIX_LOAD_FACTOR = 1.25


@dataclass(frozen=True)
class Ejection:
    """Outlier ejection: ``failures`` in a row eject for ``base_s``, doubling to ``max_s``."""

    failures: int = 3
    base_s: float = 5.0
    max_s: float = 60.0


@dataclass(eq=False)
class Instance:
    """One serving instance and what this process knows of it now."""

    model_name: str
    instance_id: str
    url: str
    capacity: int
    in_flight: int = 0
    # What the engine last reported (``load`` policy).
    engine_waiting: float = 0.0
    engine_running: float = 0.0
    kv_usage: float = 0.0
    # Outlier ejection.
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    on_probation: bool = False

    def available(self, now: float) -> bool:
        return now >= self.ejected_until

    def failed(self, now: float, rule: Ejection) -> bool:
        """Count a failure; True when it ejects the instance."""
        self.consecutive_failures += 1
        if self.consecutive_failures < rule.failures and not self.on_probation:
            return False
        self.ejections += 1
        self.consecutive_failures = 0
        self.ejected_until = now + min(rule.max_s, rule.base_s * 2 ** (self.ejections - 1))
        # Back after the ejection, but one more failure before a success ejects it again.
        self.on_probation = True
        return True

    def succeeded(self) -> None:
        self.consecutive_failures = 0
        if self.on_probation:
            self.on_probation = False
            self.ejections = 0

    @property
    def load_score(self) -> float:
        """The engine's queue weighs most, then its running batch and KV cache fill."""
        return (
            2.0 * self.engine_waiting
            + self.engine_running / max(1, self.capacity)
            + self.kv_usage
            + self.in_flight / max(1, self.capacity)
        )


@dataclass(eq=False)
class Route:
    model_id: str
    name: str
    status: ModelStatus
    status_msg: str
    policy: str
    instances: tuple[Instance, ...]
    gate: Gate
    desired_instances: int = 0
    # Requests in flight one instance holds within the SLO, as measured (scaling.capacity).
    slo_capacity: float | None = None
    _ring: list[tuple[int, Instance]] | None = field(default=None, repr=False)

    @property
    def serving(self) -> bool:
        """Ready instances take traffic whatever the status says, unless it is going away."""
        return self.status is not ModelStatus.DELETING and bool(self.instances)

    @property
    def coming(self) -> bool:
        """No instance is ready, but one is on its way (starting, restarting, from zero)."""
        return self.status in COMING_STATUSES

    @property
    def capacity(self) -> int:
        return sum(i.capacity for i in self.instances)

    def beyond_slo_capacity(self) -> bool:
        """More in flight than the ready instances hold within the SLO: the scaler should look
        now, though slots (max-num-seqs) are still free."""
        if self.slo_capacity is None or not self.instances:
            return False
        return self.gate.in_flight >= self.slo_capacity * len(self.instances)

    def candidates(self, now: float) -> list[Instance]:
        """Available instances; when every one is ejected, all of them (a panic, as Envoy's)."""
        available = [i for i in self.instances if i.available(now)]
        return available or sorted(self.instances, key=lambda i: i.ejected_until)

    def ring(self) -> list[tuple[int, Instance]]:
        if self._ring is None:
            self._ring = sorted(
                (_hash(f"{instance.url}#{point}".encode()), instance)
                for instance in self.instances
                for point in range(RING_POINTS_PER_INSTANCE)
            )
        return self._ring


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class RequestInfo:
    """What a policy may look at: the affinity key (session, else prompt prefix)."""

    affinity: bytes = b""


class RoutingPolicy(Protocol):
    def order(self, route: Route, request: RequestInfo, now: float) -> list[Instance]:
        """The route's available instances, in the order to try them."""
        ...


class RoundRobin:
    """Rotate over available instances; a retry goes to the next one."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def order(self, route: Route, request: RequestInfo, now: float) -> list[Instance]:
        instances = route.candidates(now)
        start = next(self._counter) % len(instances) if instances else 0
        return instances[start:] + instances[:start]


class LeastOutstanding:
    """Fewest requests in flight first; ties rotate, so equal instances share the load."""

    def __init__(self) -> None:
        self._rotate = RoundRobin()

    def order(self, route: Route, request: RequestInfo, now: float) -> list[Instance]:
        return sorted(self._rotate.order(route, request, now), key=lambda i: i.in_flight)


class LeastLoaded:
    """Least loaded by the engine's own report first (see :attr:`Instance.load_score`)."""

    def __init__(self) -> None:
        self._rotate = RoundRobin()

    def order(self, route: Route, request: RequestInfo, now: float) -> list[Instance]:
        return sorted(self._rotate.order(route, request, now), key=lambda i: i.load_score)


class PrefixAffinity:
    """Consistent hashing of the affinity key, with bounded load; no key: least outstanding."""

    def __init__(self) -> None:
        self._fallback = LeastOutstanding()

    def order(self, route: Route, request: RequestInfo, now: float) -> list[Instance]:
        rest = self._fallback.order(route, request, now)
        if not request.affinity or len(rest) < 2:
            return rest
        available = set(rest)
        total = sum(i.in_flight for i in available)
        bound = math.ceil(PREFIX_LOAD_FACTOR * (total + 1) / len(available))
        ring = route.ring()
        start = bisect.bisect(ring, (_hash(request.affinity),))
        for step in range(len(ring)):
            instance = ring[(start + step) % len(ring)][1]
            if instance in available and instance.in_flight < bound:
                return [instance, *(i for i in rest if i is not instance)]
        return rest


def make_policy(name: str) -> RoutingPolicy:
    policies: dict[str, type[RoutingPolicy]] = {
        "least-outstanding": LeastOutstanding,
        "round-robin": RoundRobin,
        "load": LeastLoaded,
        "prefix": PrefixAffinity,
    }
    return policies[name]()


class RoutingTable:
    """Routes by served model name; instance state and gates survive every rebuild."""

    def __init__(self, *, default_policy: str, capacity_of: CapacityOf) -> None:
        self._default_policy = default_policy
        self._capacity_of = capacity_of
        self._routes: dict[str, Route] = {}

    def rebuild(self, records: list[ModelRecord]) -> None:
        old_instances = {
            (route.model_id, instance.url): instance
            for route in self._routes.values()
            for instance in route.instances
        }
        old_gates = {route.model_id: route.gate for route in self._routes.values()}
        routes = {}
        for record in records:
            capacity = self._capacity_of(record)
            instances = []
            for endpoint in record.endpoints:
                if not endpoint.ready:
                    continue
                instance = old_instances.get((record.id, endpoint.url)) or Instance(
                    record.name, endpoint.instance_id, endpoint.url, capacity
                )
                instance.capacity = capacity
                instances.append(instance)
            routes[record.name] = Route(
                model_id=record.id,
                name=record.name,
                status=record.status,
                status_msg=record.status_msg,
                policy=record.routing_policy or self._default_policy,
                instances=tuple(instances),
                gate=old_gates.get(record.id) or Gate(),
                desired_instances=record.replicas,
                slo_capacity=record.scaling.capacity.concurrency_per_instance,
            )
        self._routes = routes
        for route in routes.values():
            route.gate.wake(route.capacity)

    def lookup(self, name: str) -> Route | None:
        return self._routes.get(name)

    def routes(self) -> list[Route]:
        return list(self._routes.values())


class CapacityOf(Protocol):
    def __call__(self, record: ModelRecord) -> int:
        """How many requests one instance of ``record`` serves at once."""
        ...
