"""What a process does while its shared counter cannot be reached (``AIF_LIMITS_UNREACHABLE``).

``open`` (the default): each process counts on its own (:class:`~api.limits.local.LocalCounters`
for Redis; the store's backend keeps its own unsynced counts), so a key gets at most N times
its limits across N processes for as long as the outage lasts. ``closed``: the requests of
keys with limits are refused with a 429 that says why, until the counter answers again; keys
with no limits are never affected. Either way a request never gets a 5xx for it.

The transition is logged once each way and shown as ``aif_limits_shared_reachable`` (1 or 0).
Detecting the outage is the backend's.
"""

from __future__ import annotations

import logging
from typing import Literal

from prometheus_client import CollectorRegistry, Gauge

from api.errors import RateLimited

logger = logging.getLogger(__name__)

UnreachableMode = Literal["open", "closed"]
# A refused request is asked to come back after about one back-off.
RETRY_AFTER_S = 1.0


class Outage:
    """Whether the shared counter answers, and what that means for a request."""

    def __init__(
        self, backend: str, mode: UnreachableMode, registry: CollectorRegistry | None = None
    ) -> None:
        self.backend = backend
        self.mode = mode
        self.reachable = True
        self._gauge: Gauge | None = None
        if registry is not None:
            self._gauge = Gauge(
                "aif_limits_shared_reachable",
                "1 while the shared counter of keys' limits answers; 0 while this process "
                "counts on its own (AIF_LIMITS_UNREACHABLE=open) or refuses limited keys "
                "(closed).",
                ["backend"],
                registry=registry,
            )
            self._gauge.labels(backend).set(1)

    def down(self, error: BaseException) -> None:
        if self.reachable:
            then = "counting in this process only" if self.mode == "open" else (
                "refusing the requests of keys with limits"
            )  # fmt: skip
            logger.warning(
                "limits: the shared counter (%s) cannot be reached (%r); %s until it can",
                self.backend, error, then,
            )  # fmt: skip
        self.reachable = False
        if self._gauge is not None:
            self._gauge.labels(self.backend).set(0)

    def up(self) -> None:
        if not self.reachable:
            logger.warning("limits: the shared counter (%s) answers again", self.backend)
        self.reachable = True
        if self._gauge is not None:
            self._gauge.labels(self.backend).set(1)

    def refused(self, name: str) -> RateLimited:
        return RateLimited(
            f"the limits of key {name!r} cannot be checked: the shared counter "
            f"({self.backend}) is unreachable (AIF_LIMITS_UNREACHABLE=closed); retry shortly",
            retry_after_s=RETRY_AFTER_S,
        )
