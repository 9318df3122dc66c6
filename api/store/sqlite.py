"""The embedded model store: one SQLite file on local disk, no server.

This is the default store (``AIF_MONGODB_URL`` unset). It survives restarts, is safe from many
threads (the FastAPI threadpool, the reconciler's workers) and from several processes sharing
the file (``aif frontend`` and ``aif model-job-executor`` started on the same data dir): the
database runs in WAL mode so readers never wait for a writer, and writers wait up to a busy
timeout for each other instead of failing.

Usage buckets are rows of ``usage_buckets`` keyed by (key, model, hour); adding to one is a
single upsert that increments the counts in place, and one call's buckets are one transaction.

Each record is one row: ``id`` (primary key), ``name`` (unique), ``revision``, ``created_at``
(for ordering) and the whole record as JSON in ``document``. Every write is a single
statement, so compare-and-set on ``revision`` needs no explicit transaction. Connections come
from a small pool, one per concurrent caller, so reads run in parallel.

Left to others: choosing the store and its location (:func:`api.store.open_store`), retrying
on :class:`~domain.store.RevisionConflict` (the callers), and the MongoDB store
(:mod:`api.store.mongo`).
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from domain.accelerators import Quarantine
from domain.errors import StoreCorrupt, StoreFull, StoreUnavailable
from domain.keys import ApiKey, AuditEvent
from domain.records import ModelRecord, stamp_spec_version
from domain.store import DuplicateName, RecordNotFound, RevisionConflict, StoreError
from domain.usage import UsageBucket

logger = logging.getLogger(__name__)

# Long enough to ride out another process's write (each is one short statement), short
# enough that a stuck holder surfaces as an error rather than a hung request.
BUSY_TIMEOUT_S = 10.0
# Above the FastAPI threadpool size (40), so steady load never closes and reopens connections.
MAX_IDLE_CONNECTIONS = 64
# Bumped when the table layout changes; a file written by a newer aif is refused.
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    revision INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS models_by_created_at ON models (created_at, id);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    -- Times the key was updated: part of keys_version, so other processes reload it.
    updates INTEGER NOT NULL DEFAULT 0,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_events (
    id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_by_model ON audit_events (model_id, id);
CREATE TABLE IF NOT EXISTS accelerator_quarantines (
    node TEXT NOT NULL,
    card INTEGER NOT NULL,
    document TEXT NOT NULL,
    PRIMARY KEY (node, card)
);
CREATE TABLE IF NOT EXISTS limit_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS limit_counters_by_expiry ON limit_counters (expires_at);
CREATE TABLE IF NOT EXISTS usage_buckets (
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    hour TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (key_id, model, hour)
);
CREATE INDEX IF NOT EXISTS usage_buckets_by_hour ON usage_buckets (hour);
"""

_ADD_USAGE = """
INSERT INTO usage_buckets (key_id, model, hour, requests, prompt_tokens, completion_tokens)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (key_id, model, hour) DO UPDATE SET
    requests = requests + excluded.requests,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens
"""


_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def recovery_advice(path: Path) -> str:
    return (
        f"stop aif, then restore {path} from a backup, or move it away (e.g. to {path}.broken) "
        "to start with an empty store"
    )


def translate(exc: sqlite3.Error, path: Path, busy_timeout_s: float) -> StoreError:
    """A SQLite failure in the domain's words: unavailable, full, corrupt, or other."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(exc)
    if code in _BUSY_CODES or "locked" in text or "busy" in text:
        return StoreUnavailable(
            f"the model store is locked by another writer (waited {busy_timeout_s:g}s); "
            "retry shortly",
            retry_after_s=max(1.0, busy_timeout_s),
        )
    if code == sqlite3.SQLITE_FULL or "disk is full" in text:
        return StoreFull(f"the disk under the model store ({path}) is full: free space, then retry")
    if code in _CORRUPT_CODES or "malformed" in text or "not a database" in text:
        return StoreCorrupt(
            f"the model store file {path} is damaged ({text}): {recovery_advice(path)}",
            path=str(path),
        )
    return StoreError(f"the model store ({path}) failed: {text}")


def _order_key(moment: datetime) -> str:
    """Fixed-width UTC text, so SQLite's string order is time order (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch_s(moment: datetime) -> float:
    """Seconds since the epoch (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class _ConnectionPool:
    """Hands each caller a connection of its own; idle connections are kept for reuse."""

    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout_s,
            # Autocommit: every statement is its own transaction.
            isolation_level=None,
            # A pooled connection moves between threads, but only one uses it at a time.
            check_same_thread=False,
        )
        try:
            # FULL: a model the API acknowledged must survive a power loss, not only a crash.
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._borrowed() as conn:
                yield conn
        except sqlite3.IntegrityError:
            raise  # the callers name the broken constraint
        except sqlite3.Error as exc:
            raise translate(exc, self._path, self._busy_timeout_s) from exc

    @contextmanager
    def _borrowed(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError("the model store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            with self._lock:
                keep = not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class SqliteModelStore:
    """A :class:`~domain.store.ModelStore` in one SQLite file at ``path``.

    Failures come out as the domain's store errors (:func:`translate`): a writer held up past
    ``busy_timeout_s`` is :class:`~domain.errors.StoreUnavailable`, a full disk
    :class:`~domain.errors.StoreFull`, a damaged file :class:`~domain.errors.StoreCorrupt`.
    """

    def __init__(self, path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._pool = _ConnectionPool(path, busy_timeout_s)
        try:
            with self._pool.connection() as conn:
                self._prepare(conn)
        except BaseException:
            self._pool.close()
            raise
        logger.info("model store: sqlite file %s", path)

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # WAL is a property of the file: set once, every later connection uses it.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: cannot use WAL mode (got {mode!r})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this aif knows {SCHEMA_VERSION}"
            )
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
        if "updates" not in columns:  # a file from before keys could be updated
            conn.execute("ALTER TABLE api_keys ADD COLUMN updates INTEGER NOT NULL DEFAULT 0")
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def create(self, record: ModelRecord) -> ModelRecord:
        first = {"revision": 1, "resource_version": 0, "spec_digest": ""}
        stored = stamp_spec_version(record.model_copy(update=first, deep=True))
        try:
            with self._pool.connection() as conn:
                conn.execute(
                    "INSERT INTO models (id, name, revision, created_at, document)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        stored.id,
                        stored.name,
                        stored.revision,
                        _order_key(stored.created_at),
                        stored.model_dump_json(),
                    ),
                )
        except sqlite3.IntegrityError as exc:
            raise self._unique_violation(exc, stored) from exc
        return stored

    def get(self, model_id: str) -> ModelRecord | None:
        return self._fetch_one("SELECT document FROM models WHERE id = ?", model_id)

    def get_by_name(self, name: str) -> ModelRecord | None:
        return self._fetch_one("SELECT document FROM models WHERE name = ?", name)

    def list(self) -> list[ModelRecord]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT document FROM models ORDER BY created_at, id").fetchall()
        return [ModelRecord.model_validate_json(document) for (document,) in rows]

    def replace(self, record: ModelRecord) -> ModelRecord:
        stored = stamp_spec_version(
            record.model_copy(update={"revision": record.revision + 1}, deep=True)
        )
        try:
            with self._pool.connection() as conn:
                cursor = conn.execute(
                    "UPDATE models SET name = ?, revision = ?, created_at = ?, document = ?"
                    " WHERE id = ? AND revision = ?",
                    (
                        stored.name,
                        stored.revision,
                        _order_key(stored.created_at),
                        stored.model_dump_json(),
                        record.id,
                        record.revision,
                    ),
                )
                if cursor.rowcount == 0:
                    raise self._miss(conn, record.id)
        except sqlite3.IntegrityError as exc:
            raise self._unique_violation(exc, stored) from exc
        return stored

    def delete(self, model_id: str, revision: int) -> None:
        with self._pool.connection() as conn:
            cursor = conn.execute(
                "DELETE FROM models WHERE id = ? AND revision = ?", (model_id, revision)
            )
            if cursor.rowcount == 0:
                raise self._miss(conn, model_id)

    def create_key(self, key: ApiKey) -> ApiKey:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO api_keys (id, created_at, revoked, document) VALUES (?, ?, ?, ?)",
                (key.id, _order_key(key.created_at), int(key.revoked), key.model_dump_json()),
            )
        return key.model_copy(deep=True)

    def list_keys(self) -> builtins.list[ApiKey]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT document FROM api_keys ORDER BY created_at, id").fetchall()
        return [ApiKey.model_validate_json(document) for (document,) in rows]

    def revoke_key(self, key_id: str, at: datetime) -> tuple[ApiKey, bool] | None:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT document FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                return None
            key = ApiKey.model_validate_json(row[0])
            if key.revoked:
                return key, False
            key.revoked_at = at
            cursor = conn.execute(
                "UPDATE api_keys SET revoked = 1, document = ? WHERE id = ? AND revoked = 0",
                (key.model_dump_json(), key_id),
            )
        if cursor.rowcount == 0:  # revoked meanwhile by another caller
            return self.revoke_key(key_id, at)
        return key, True

    def update_key(self, key: ApiKey) -> ApiKey | None:
        with self._pool.connection() as conn:
            cursor = conn.execute(
                "UPDATE api_keys SET updates = updates + 1, document = ?"
                " WHERE id = ? AND revoked = 0",
                (key.model_dump_json(), key.id),
            )
            if cursor.rowcount == 1:
                return key.model_copy(deep=True)
            row = conn.execute("SELECT document FROM api_keys WHERE id = ?", (key.id,)).fetchone()
        return None if row is None else ApiKey.model_validate_json(row[0])

    def keys_version(self) -> str:
        with self._pool.connection() as conn:
            total, revoked, updates = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(revoked), 0), COALESCE(SUM(updates), 0)"
                " FROM api_keys"
            ).fetchone()
        return f"{total}:{revoked}:{updates}"

    def add_usage(self, buckets: builtins.list[UsageBucket]) -> None:
        rows = [
            (b.key_id, b.model, _order_key(b.hour), b.requests, b.prompt_tokens,
             b.completion_tokens)
            for b in buckets
        ]  # fmt: skip
        if not rows:
            return
        with self._pool.connection() as conn:
            # One transaction: a flush's buckets are all counted, or none are.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_ADD_USAGE, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def usage(
        self,
        key_id: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> builtins.list[UsageBucket]:
        where, params = [], []
        for clause, value in (
            ("key_id = ?", key_id),
            ("model = ?", model),
            ("hour >= ?", None if since is None else _order_key(since)),
            ("hour < ?", None if until is None else _order_key(until)),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        query = (
            "SELECT key_id, model, hour, requests, prompt_tokens, completion_tokens"
            " FROM usage_buckets"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY hour, key_id, model"
        )
        with self._pool.connection() as conn:
            rows = conn.execute(query, params).fetchall()
        return [
            UsageBucket(
                key_id=key, model=name, hour=datetime.fromisoformat(hour), requests=requests,
                prompt_tokens=prompt, completion_tokens=completion,
            )
            for key, name, hour, requests, prompt, completion in rows
        ]  # fmt: skip

    def append_event(self, event: AuditEvent) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO audit_events (id, model_id, document) VALUES (?, ?, ?)",
                (event.id, event.model_id, event.model_dump_json()),
            )

    def events(self, model_id: str | None = None, limit: int = 100) -> builtins.list[AuditEvent]:
        with self._pool.connection() as conn:
            if model_id is None:
                rows = conn.execute(
                    "SELECT document FROM audit_events ORDER BY id DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT document FROM audit_events WHERE model_id = ? ORDER BY id DESC LIMIT ?",
                    (model_id, limit),
                ).fetchall()
        return [AuditEvent.model_validate_json(document) for (document,) in reversed(rows)]

    def quarantines(self) -> builtins.list[Quarantine]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT document FROM accelerator_quarantines ORDER BY node, card"
            ).fetchall()
        return [Quarantine.model_validate_json(document) for (document,) in rows]

    def put_quarantine(self, quarantine: Quarantine) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO accelerator_quarantines (node, card, document) "
                "VALUES (?, ?, ?)",
                (quarantine.node, quarantine.index, quarantine.model_dump_json()),
            )

    def drop_quarantine(self, node: str, index: int) -> bool:
        with self._pool.connection() as conn:
            cursor = conn.execute(
                "DELETE FROM accelerator_quarantines WHERE node = ? AND card = ?", (node, index)
            )
        return cursor.rowcount > 0

    def add_counters(self, deltas: dict[str, int], expires_at: datetime) -> dict[str, int]:
        if not deltas:
            return {}
        expiry = _epoch_s(expires_at)
        added = [(name, delta, expiry) for name, delta in deltas.items() if delta]
        with self._pool.connection() as conn:
            # One write transaction: the totals read back are those right after these adds. A
            # zero delta is only read: no row for a counter nobody added to.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO limit_counters (name, value, expires_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value,"
                    " expires_at = max(expires_at, excluded.expires_at)",
                    added,
                )
                names = list(deltas)
                rows = conn.execute(
                    "SELECT name, value FROM limit_counters WHERE name IN"
                    f" ({','.join('?' * len(names))})",
                    names,
                ).fetchall()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        totals = dict(rows)
        return {name: totals.get(name, 0) for name in deltas}

    def expire_counters(self, now: datetime) -> int:
        with self._pool.connection() as conn:
            cursor = conn.execute(
                "DELETE FROM limit_counters WHERE expires_at < ?", (_epoch_s(now),)
            )
        return cursor.rowcount

    def close(self) -> None:
        self._pool.close()

    def check(self, timeout_s: float) -> None:
        """Raise unless the store can take a write within ``timeout_s`` (readiness).

        Readers never wait in WAL mode, so this takes the write lock and gives it back at once.
        """
        try:
            conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise translate(exc, self.path, timeout_s) from exc
        try:
            conn.execute("SELECT 1 FROM models LIMIT 1").fetchall()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise translate(exc, self.path, timeout_s) from exc
        finally:
            conn.close()

    def _fetch_one(self, query: str, key: str) -> ModelRecord | None:
        with self._pool.connection() as conn:
            row = conn.execute(query, (key,)).fetchone()
        return None if row is None else ModelRecord.model_validate_json(row[0])

    @staticmethod
    def _miss(conn: sqlite3.Connection, model_id: str) -> StoreError:
        """Why a compare-and-set touched no row: the record is gone, or it changed."""
        exists = conn.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone()
        return RevisionConflict(model_id) if exists else RecordNotFound(model_id)

    @staticmethod
    def _unique_violation(exc: sqlite3.IntegrityError, record: ModelRecord) -> StoreError:
        if "models.name" in str(exc):
            return DuplicateName(record.name)
        return StoreError(f"model {record.id} cannot be stored: {exc}")
