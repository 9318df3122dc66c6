"""Keys' rpm, tpm and token budgets, counted once per request across every gateway process.

What the limits mean is :mod:`.window`'s (a sliding minute of one-second slots, a budget per
UTC day or month); where they are counted is a :class:`Counters` backend, built by
:func:`build_counters` in the app's lifespan:

* :class:`RedisCounters` when ``AIF_REDIS_URL`` is set: one atomic Lua call per admission,
  exact across processes;
* :class:`SyncedCounters` otherwise: the store every process shares already, synced every
  ``AIF_LIMITS_SYNC_S`` in the background, so no request writes the store;
* :class:`LocalCounters`: one process's own counts, the fallback while the shared counter is
  unreachable (``AIF_LIMITS_UNREACHABLE``, :mod:`.outage`).

Which keys are limited and who they are is :mod:`api.auth`'s; a key with no limits and no
budget reaches none of this.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from api.limits.local import Counters, LocalCounters
from api.limits.outage import Outage, UnreachableMode
from api.limits.redis_counters import RedisCounters
from api.limits.synced import SyncedCounters
from api.limits.window import KeyLimits
from domain.settings import Settings
from domain.store import ModelStore

__all__ = [
    "Counters",
    "KeyLimits",
    "LocalCounters",
    "Outage",
    "RedisCounters",
    "SyncedCounters",
    "UnreachableMode",
    "build_counters",
]


def build_counters(
    settings: Settings, store: ModelStore, registry: CollectorRegistry | None = None
) -> Counters:
    """Redis when ``AIF_REDIS_URL`` is set, else the store (see the module)."""
    if settings.redis_url is not None and settings.redis_url.get_secret_value():
        outage = Outage("redis", settings.limits_unreachable, registry)
        return RedisCounters.from_url(
            settings.redis_url.get_secret_value(), outage, timeout_s=settings.redis_timeout_s
        )
    outage = Outage("store", settings.limits_unreachable, registry)
    return SyncedCounters(store, outage, sync_s=settings.limits_sync_s)
