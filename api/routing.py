"""The gateway's in-memory routing table, and the policy that picks an instance.

The table maps a served model name to its status and ready endpoints. It is rebuilt from the
store (where the model-job-executor records what it observes) on a short interval and on
every local change, so the request path never touches the database. The policy is a seam:
round-robin today; load-, KV- and prefix-aware policies plug in behind the same protocol.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Protocol

from domain.records import Endpoint, ModelRecord, ModelStatus

# Statuses in which a model's ready instances take traffic: an UPDATING model keeps serving.
SERVING_STATUSES = frozenset({ModelStatus.ACTIVE, ModelStatus.UPDATING})


@dataclass(frozen=True)
class Route:
    model_id: str
    name: str
    status: ModelStatus
    status_msg: str
    endpoints: tuple[Endpoint, ...]

    @property
    def serving(self) -> bool:
        return self.status in SERVING_STATUSES and bool(self.endpoints)


class RoutingTable:
    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def rebuild(self, records: list[ModelRecord]) -> None:
        self._routes = {
            r.name: Route(
                model_id=r.id,
                name=r.name,
                status=r.status,
                status_msg=r.status_msg,
                endpoints=tuple(e for e in r.endpoints if e.ready),
            )
            for r in records
        }

    def lookup(self, name: str) -> Route | None:
        return self._routes.get(name)

    def names(self) -> list[str]:
        return sorted(self._routes)


class RoutingPolicy(Protocol):
    def order(self, route: Route, request: dict[str, Any]) -> list[Endpoint]:
        """The route's endpoints in the order to try them."""
        ...


class RoundRobin:
    """Rotate over ready instances; the next attempt after a failure goes to the next one."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def order(self, route: Route, request: dict[str, Any]) -> list[Endpoint]:
        endpoints = list(route.endpoints)
        if not endpoints:
            return []
        start = next(self._counter) % len(endpoints)
        return endpoints[start:] + endpoints[:start]
