"""The ``ModelStore`` protocol, and the one read-modify-write every writer goes through.

Every store keeps whole :class:`~domain.records.ModelRecord` documents keyed by ``id`` with a
unique ``name``. Writes are compare-and-set on ``revision``: :meth:`ModelStore.replace`
succeeds only when the stored revision equals the record's, and returns the record with the
revision bumped. :func:`rewrite` and :func:`remove` read, change and write under that rule,
re-reading on :class:`~domain.errors.RevisionConflict`, so no concurrent update is ever lost;
after :data:`MAX_WRITE_ATTEMPTS` lost races in a row they give up with
:class:`~domain.errors.WriteContention` rather than spin.

The same stores keep the API keys (created, updated and revoked, never deleted; a cheap
:meth:`ModelStore.keys_version` tells caches to reload), the audit trail (appended by
:func:`audit`, read back in time order), each key's usage per model and hour (only ever
incremented, see :mod:`domain.usage`) and the counters of keys' limits (atomic increments that
expire, :meth:`ModelStore.add_counters`). Implementations of the protocol:
:mod:`api.store.sqlite` (embedded, default) and :mod:`api.store.mongo` (pymongo).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from domain.accelerators import Quarantine
from domain.errors import (
    DuplicateName,
    RecordNotFound,
    RevisionConflict,
    StoreError,
    WriteContention,
)
from domain.keys import ApiKey, AuditEvent
from domain.records import ModelRecord
from domain.usage import UsageBucket

__all__ = [
    "MAX_WRITE_ATTEMPTS",
    "Change",
    "DuplicateName",
    "ModelStore",
    "RecordNotFound",
    "RevisionConflict",
    "StoreError",
    "WriteContention",
    "audit",
    "remove",
    "rewrite",
]

logger = logging.getLogger(__name__)

# Losing the race this many times in a row means a writer is spinning on the record (a scaler
# and an executor each write at most a few times a second): report it rather than retry forever.
MAX_WRITE_ATTEMPTS = 20


class ModelStore(Protocol):
    """Persistence of model records, API keys and the audit trail, shared by every role.

    Calls are blocking: async callers run them in a worker thread. Each method is atomic on
    one record; nothing spans records.
    """

    def create(self, record: ModelRecord) -> ModelRecord:
        """Insert a new record (revision becomes 1). Raises DuplicateName."""
        ...

    def get(self, model_id: str) -> ModelRecord | None: ...

    def get_by_name(self, name: str) -> ModelRecord | None: ...

    def list(self) -> list[ModelRecord]:
        """All records, oldest first."""
        ...

    def replace(self, record: ModelRecord) -> ModelRecord:
        """Write ``record`` if the stored revision equals ``record.revision``.

        Returns the stored record (revision + 1). Raises RevisionConflict when the stored
        revision differs, RecordNotFound when the record is gone.
        """
        ...

    def delete(self, model_id: str, revision: int) -> None:
        """Remove the record if its revision is ``revision``.

        Raises RevisionConflict when the stored revision differs, RecordNotFound when the
        record is already gone.
        """
        ...

    # --- API keys: created, listed, revoked; never deleted ------------------------------

    def create_key(self, key: ApiKey) -> ApiKey:
        """Insert a new key record."""
        ...

    def list_keys(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones too, oldest first."""
        ...

    def revoke_key(self, key_id: str, at: datetime) -> tuple[ApiKey, bool] | None:
        """Mark the key revoked at ``at`` unless it is already; the key as stored and whether
        this call revoked it, or None when there is no such key."""
        ...

    def update_key(self, key: ApiKey) -> ApiKey | None:
        """Write ``key`` over the stored key of its id unless that one is revoked.

        Returns the key as stored afterwards (the revoked one, unchanged, when it was
        revoked), or None when there is no such key.
        """
        ...

    def keys_version(self) -> str:
        """Changes whenever a key is created, updated or revoked: a cheap read that tells a
        cache of the keys (in any process) to reload them."""
        ...

    # --- usage: buckets per key, model and hour, only ever incremented ------------------------

    def add_usage(self, buckets: builtins.list[UsageBucket]) -> None:
        """Add each bucket's counts to the stored bucket of its key, model and hour (created
        at zero when there is none); concurrent writers' increments all count."""
        ...

    def usage(
        self,
        key_id: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> builtins.list[UsageBucket]:
        """The stored buckets of hours from ``since`` (inclusive) to ``until`` (exclusive),
        of one key and one model when given, in hour order (then key, then model)."""
        ...

    # --- the audit trail: appended, read back in time order ------------------------------

    def append_event(self, event: AuditEvent) -> None: ...

    def events(self, model_id: str | None = None, limit: int = 100) -> builtins.list[AuditEvent]:
        """The latest ``limit`` events (of one model when ``model_id`` is given), oldest first."""
        ...

    # --- quarantined accelerator cards: kept across restarts ------------------------------

    def quarantines(self) -> builtins.list[Quarantine]:
        """Every quarantined card."""
        ...

    def put_quarantine(self, quarantine: Quarantine) -> None:
        """Store the card's quarantine, replacing the one it had."""
        ...

    def drop_quarantine(self, node: str, index: int) -> bool:
        """Release the card; whether it was quarantined."""
        ...

    # --- counters of keys' limits, shared by every process (api.limits.synced) -----------

    def add_counters(self, deltas: dict[str, int], expires_at: datetime) -> dict[str, int]:
        """Add each delta to its counter (a missing one starts at 0) and return every named
        counter's total after the addition; each increment is atomic, so concurrent callers
        never lose one. A counter's expiry becomes ``expires_at`` if that is later."""
        ...

    def expire_counters(self, now: datetime) -> int:
        """Remove the counters that expired before ``now``; how many."""
        ...

    def close(self) -> None:
        """Release connections; calling it again does nothing."""
        ...


Change = Callable[[ModelRecord], ModelRecord | None]


def rewrite(store: ModelStore, model_id: str, change: Change) -> tuple[ModelRecord, bool] | None:
    """Read the record, let ``change`` make the next version, and write that back.

    ``change`` gets a fresh copy on every attempt and returns the record to write (itself,
    edited, or a new one), or None when there is nothing to write; it may raise to refuse.
    Returns the record as stored and whether this call wrote it, or None when there is no such
    record. Raises WriteContention after :data:`MAX_WRITE_ATTEMPTS` lost races.
    """
    for _ in range(MAX_WRITE_ATTEMPTS):
        record = store.get(model_id)
        if record is None:
            return None
        changed = change(record)
        if changed is None:
            return record, False
        try:
            return store.replace(changed), True
        except RevisionConflict:
            continue
        except RecordNotFound:
            return None
    raise WriteContention(model_id, MAX_WRITE_ATTEMPTS)


def remove(store: ModelStore, model_id: str) -> ModelRecord | None:
    """Delete the record whatever its revision; the record removed, or None if it was gone."""
    for _ in range(MAX_WRITE_ATTEMPTS):
        record = store.get(model_id)
        if record is None:
            return None
        try:
            store.delete(model_id, record.revision)
        except RevisionConflict:
            continue
        except RecordNotFound:
            return None
        return record
    raise WriteContention(model_id, MAX_WRITE_ATTEMPTS)


def audit(store: ModelStore, event: AuditEvent) -> None:
    """Append ``event`` to the audit trail, after the change it records was written.

    A failure is logged, not raised: the change is made and the caller's answer must say so.
    """
    try:
        store.append_event(event)
    except Exception:
        logger.exception(
            "audit event lost action=%s actor=%s model=%s key=%s changes=%s",
            event.action, event.actor, event.model_id, event.key_id, event.changes,
        )  # fmt: skip
