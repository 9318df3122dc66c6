"""The MongoDB model store, used when ``AIF_MONGODB_URL`` is set.

One document per record in one collection: ``_id`` is the record's id, ``name`` carries a
unique index, and the remaining fields are the record's own. Timestamps are stored as BSON
dates, which hold milliseconds, so the store truncates them to the millisecond before writing
and reads them back as UTC; what a write returns is exactly what a later read returns. Writes
are compare-and-set with the filter ``{_id, revision}``.

:meth:`MongoModelStore.from_url` builds the client with the options the control plane wants
(bounded server selection, retryable writes, majority write concern); the constructor takes
any client, so tests can pass a fake at the pymongo boundary. The store owns its client and
closes it in :meth:`MongoModelStore.close`.

Usage buckets are documents of their own collection, ``_id`` the bucket's key, model and hour,
incremented in place by upserting ``$inc`` updates (one bulk write per call, so a flush is one
round trip); an update of one ``_id`` is atomic, so concurrent writers' counts all add up. A
bulk write is not one transaction: when it fails part-way, the buckets already written stay.

Left to others: choosing the store (:func:`api.store.open_store`), retrying on
:class:`~domain.store.RevisionConflict` (the callers), and the embedded store
(:mod:`api.store.sqlite`).
"""

from __future__ import annotations

import builtins
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlsplit

import pymongo
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure, PyMongoError

from domain.accelerators import Quarantine, card_name
from domain.errors import StoreFull, StoreUnavailable
from domain.keys import ApiKey, AuditEvent
from domain.records import ModelRecord, stamp_spec_version
from domain.store import DuplicateName, RecordNotFound, RevisionConflict, StoreError
from domain.usage import UsageBucket

logger = logging.getLogger(__name__)

# Fail startup within seconds when the server is unreachable, rather than pymongo's 30 s.
SERVER_SELECTION_TIMEOUT_MS = 5_000
CONNECT_TIMEOUT_MS = 5_000
# Client options the control plane wants; an option spelled in the URL wins over these.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS,
    "connectTimeoutMS": CONNECT_TIMEOUT_MS,
    # One failover during a write is retried once by the driver instead of failing the request.
    "retryWrites": True,
    # An acknowledged write must survive the primary stepping down.
    "w": "majority",
    "tz_aware": True,
    "appname": "aif",
}

Document = dict[str, Any]

# MongoDB's code for a write refused because the disk is full.
_OUT_OF_DISK_SPACE = 14031

_P = ParamSpec("_P")
_R = TypeVar("_R")


def translate(exc: PyMongoError) -> StoreError:
    """A pymongo failure in the domain's words: unavailable, full, or other."""
    if isinstance(exc, AutoReconnect):  # ServerSelectionTimeoutError is one
        return StoreUnavailable(
            f"the model store (MongoDB) cannot be reached: {exc}", retry_after_s=5.0
        )
    if isinstance(exc, OperationFailure) and exc.code == _OUT_OF_DISK_SPACE:
        return StoreFull(f"the disk under the model store (MongoDB) is full: {exc}")
    return StoreError(f"the model store (MongoDB) failed: {exc}")


def _translating(method: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except DuplicateKeyError:
            raise
        except PyMongoError as exc:
            raise translate(exc) from exc

    return wrapper


_TIMESTAMP_FIELDS = ("created_at", "updated_at")
# Keys and audit events live beside the models, in collections of their own.
KEYS_COLLECTION = "api_keys"
EVENTS_COLLECTION = "audit_events"
QUARANTINES_COLLECTION = "accelerator_quarantines"
USAGE_COLLECTION = "usage_buckets"
COUNTERS_COLLECTION = "limit_counters"


def _to_millisecond(moment: datetime) -> datetime:
    """UTC, truncated to what a BSON date holds (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _order_key(moment: datetime) -> str:
    """Fixed-width UTC text, so string order is time order."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _as_utc(moment: datetime) -> datetime:
    """A client built without tz_aware hands back naive datetimes that are UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _bucket_id(bucket: UsageBucket) -> Document:
    # A sub-document matches only with its fields in this order: always built here.
    return {"key": bucket.key_id, "model": bucket.model, "hour": _order_key(bucket.hour)}


def _to_document(record: ModelRecord) -> Document:
    document = record.model_dump(mode="json", exclude={"id"})
    for field in _TIMESTAMP_FIELDS:
        document[field] = _to_millisecond(getattr(record, field))
    return {"_id": record.id, **document}


def _from_document(document: Document) -> ModelRecord:
    fields = dict(document)
    fields["id"] = fields.pop("_id")
    for field in _TIMESTAMP_FIELDS:
        moment = fields.get(field)
        # A client built without tz_aware hands back naive datetimes that are UTC.
        if isinstance(moment, datetime) and moment.tzinfo is None:
            fields[field] = moment.replace(tzinfo=UTC)
    return ModelRecord.model_validate(fields)


class MongoModelStore:
    """A :class:`~domain.store.ModelStore` in the collection ``database.collection``."""

    def __init__(
        self,
        client: pymongo.MongoClient[Document],
        database: str = "aif",
        collection: str = "models",
    ) -> None:
        self._client = client
        self._collection: Collection[Document] = client[database][collection]
        self._keys: Collection[Document] = client[database][KEYS_COLLECTION]
        self._events: Collection[Document] = client[database][EVENTS_COLLECTION]
        self._quarantines: Collection[Document] = client[database][QUARANTINES_COLLECTION]
        self._usage: Collection[Document] = client[database][USAGE_COLLECTION]
        self._counters: Collection[Document] = client[database][COUNTERS_COLLECTION]
        try:
            self._collection.create_indexes(
                [
                    pymongo.IndexModel([("name", pymongo.ASCENDING)], unique=True, name="name"),
                    pymongo.IndexModel(
                        [("created_at", pymongo.ASCENDING), ("_id", pymongo.ASCENDING)],
                        name="created_at",
                    ),
                ]
            )
            self._keys.create_index([("order", pymongo.ASCENDING)], name="order")
            self._events.create_index(
                [("model_id", pymongo.ASCENDING), ("_id", pymongo.ASCENDING)], name="model_id"
            )
            # A report reads a time range, of one key or all.
            self._usage.create_indexes(
                [
                    pymongo.IndexModel([("hour", pymongo.ASCENDING)], name="hour"),
                    pymongo.IndexModel(
                        [("key_id", pymongo.ASCENDING), ("hour", pymongo.ASCENDING)],
                        name="key_id_hour",
                    ),
                ]
            )
            # The server removes expired counters by itself too (its TTL monitor, each minute).
            self._counters.create_index(
                [("expires_at", pymongo.ASCENDING)], name="expires_at", expireAfterSeconds=0
            )
        except BaseException:
            client.close()
            raise
        logger.info("model store: mongodb collection %s.%s", database, collection)

    @classmethod
    def from_url(cls, url: str, database: str = "aif") -> MongoModelStore:
        """Connect to ``url`` with :data:`DEFAULT_CLIENT_OPTIONS` where the URL sets none."""
        in_url = {key.lower() for key, _ in parse_qsl(urlsplit(url).query)}
        options = {k: v for k, v in DEFAULT_CLIENT_OPTIONS.items() if k.lower() not in in_url}
        client: pymongo.MongoClient[Document] = pymongo.MongoClient(url, **options)
        return cls(client, database=database)

    @_translating
    def create(self, record: ModelRecord) -> ModelRecord:
        first = {"revision": 1, "resource_version": 0, "spec_digest": ""}
        document = _to_document(stamp_spec_version(record.model_copy(update=first)))
        try:
            self._collection.insert_one(document)
        except DuplicateKeyError as exc:
            raise self._duplicate(exc, record) from exc
        return _from_document(document)

    @_translating
    def get(self, model_id: str) -> ModelRecord | None:
        document = self._collection.find_one({"_id": model_id})
        return None if document is None else _from_document(document)

    @_translating
    def get_by_name(self, name: str) -> ModelRecord | None:
        document = self._collection.find_one({"name": name})
        return None if document is None else _from_document(document)

    @_translating
    def list(self) -> list[ModelRecord]:
        cursor = self._collection.find(
            {}, sort=[("created_at", pymongo.ASCENDING), ("_id", pymongo.ASCENDING)]
        )
        return [_from_document(document) for document in cursor]

    @_translating
    def replace(self, record: ModelRecord) -> ModelRecord:
        next_revision = record.model_copy(update={"revision": record.revision + 1})
        document = _to_document(stamp_spec_version(next_revision))
        try:
            result = self._collection.replace_one(
                {"_id": record.id, "revision": record.revision}, document
            )
        except DuplicateKeyError as exc:
            raise self._duplicate(exc, record) from exc
        if result.matched_count == 0:
            raise self._miss(record.id)
        return _from_document(document)

    @_translating
    def delete(self, model_id: str, revision: int) -> None:
        result = self._collection.delete_one({"_id": model_id, "revision": revision})
        if result.deleted_count == 0:
            raise self._miss(model_id)

    # Keys and events are stored as their JSON form (timestamps as ISO text, to the
    # microsecond) under ``document``, beside the fields queries use.

    @_translating
    def create_key(self, key: ApiKey) -> ApiKey:
        self._keys.insert_one(
            {
                "_id": key.id,
                "order": _order_key(key.created_at) + key.id,
                "revoked": key.revoked,
                "document": key.model_dump(mode="json"),
            }
        )
        return key.model_copy(deep=True)

    @_translating
    def list_keys(self) -> builtins.list[ApiKey]:
        cursor = self._keys.find({}, sort=[("order", pymongo.ASCENDING)])
        return [ApiKey.model_validate(document["document"]) for document in cursor]

    @_translating
    def revoke_key(self, key_id: str, at: datetime) -> tuple[ApiKey, bool] | None:
        found = self._keys.find_one({"_id": key_id})
        if found is None:
            return None
        key = ApiKey.model_validate(found["document"])
        if key.revoked:
            return key, False
        key.revoked_at = at
        result = self._keys.update_one(
            {"_id": key_id, "revoked": False},
            {"$set": {"revoked": True, "document": key.model_dump(mode="json")}},
        )
        if result.matched_count == 0:  # revoked meanwhile by another caller
            return self.revoke_key(key_id, at)
        return key, True

    @_translating
    def update_key(self, key: ApiKey) -> ApiKey | None:
        result = self._keys.update_one(
            {"_id": key.id, "revoked": False},
            {"$set": {"document": key.model_dump(mode="json")}, "$inc": {"updates": 1}},
        )
        if result.matched_count == 1:
            return key.model_copy(deep=True)
        found = self._keys.find_one({"_id": key.id})
        return None if found is None else ApiKey.model_validate(found["document"])

    @_translating
    def keys_version(self) -> str:
        total = self._keys.count_documents({})
        revoked = self._keys.count_documents({"revoked": True})
        summed = list(
            self._keys.aggregate([{"$group": {"_id": None, "updates": {"$sum": "$updates"}}}])
        )
        updates = summed[0]["updates"] if summed else 0
        return f"{total}:{revoked}:{updates}"

    @_translating
    def add_usage(self, buckets: builtins.list[UsageBucket]) -> None:
        if not buckets:
            return
        updates = [
            pymongo.UpdateOne(
                {"_id": _bucket_id(bucket)},
                {
                    "$setOnInsert": {
                        "key_id": bucket.key_id,
                        "model": bucket.model,
                        "hour": _to_millisecond(bucket.hour),
                    },
                    "$inc": {
                        "requests": bucket.requests,
                        "prompt_tokens": bucket.prompt_tokens,
                        "completion_tokens": bucket.completion_tokens,
                    },
                },
                upsert=True,
            )
            for bucket in buckets
        ]
        self._usage.bulk_write(updates, ordered=True)

    @_translating
    def usage(
        self,
        key_id: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> builtins.list[UsageBucket]:
        query: Document = {}
        if key_id is not None:
            query["key_id"] = key_id
        if model is not None:
            query["model"] = model
        hours: Document = {}
        if since is not None:
            hours["$gte"] = _to_millisecond(since)
        if until is not None:
            hours["$lt"] = _to_millisecond(until)
        if hours:
            query["hour"] = hours
        order = [("hour", pymongo.ASCENDING), ("key_id", pymongo.ASCENDING),
                 ("model", pymongo.ASCENDING)]  # fmt: skip
        return [
            UsageBucket(
                key_id=document["key_id"],
                model=document["model"],
                hour=_as_utc(document["hour"]),
                requests=document["requests"],
                prompt_tokens=document["prompt_tokens"],
                completion_tokens=document["completion_tokens"],
            )
            for document in self._usage.find(query, sort=order)
        ]

    @_translating
    def append_event(self, event: AuditEvent) -> None:
        self._events.insert_one(
            {"_id": event.id, "model_id": event.model_id, "document": event.model_dump(mode="json")}
        )

    @_translating
    def events(self, model_id: str | None = None, limit: int = 100) -> builtins.list[AuditEvent]:
        query = {} if model_id is None else {"model_id": model_id}
        cursor = self._events.find(query, sort=[("_id", pymongo.DESCENDING)], limit=limit)
        return [AuditEvent.model_validate(document["document"]) for document in cursor][::-1]

    @_translating
    def quarantines(self) -> builtins.list[Quarantine]:
        cursor = self._quarantines.find({}, sort=[("_id", pymongo.ASCENDING)])
        return [Quarantine.model_validate(document["document"]) for document in cursor]

    @_translating
    def put_quarantine(self, quarantine: Quarantine) -> None:
        self._quarantines.replace_one(
            {"_id": card_name(quarantine.node, quarantine.index)},
            {"document": quarantine.model_dump(mode="json")},
            upsert=True,
        )

    @_translating
    def drop_quarantine(self, node: str, index: int) -> bool:
        return self._quarantines.delete_one({"_id": card_name(node, index)}).deleted_count > 0

    @_translating
    def add_counters(self, deltas: dict[str, int], expires_at: datetime) -> dict[str, int]:
        if not deltas:
            return {}
        expiry = _to_millisecond(expires_at)
        # Each $inc is atomic on its document; the totals are read once all are applied. A
        # zero delta is only read: no write, and no document for a counter nobody added to.
        for name, delta in deltas.items():
            if delta:
                self._counters.update_one(
                    {"_id": name},
                    {"$inc": {"value": delta}, "$max": {"expires_at": expiry}},
                    upsert=True,
                )
        found = self._counters.find({"_id": {"$in": list(deltas)}})
        totals = {document["_id"]: int(document["value"]) for document in found}
        return {name: totals.get(name, 0) for name in deltas}

    @_translating
    def expire_counters(self, now: datetime) -> int:
        removed = self._counters.delete_many({"expires_at": {"$lt": _to_millisecond(now)}})
        return removed.deleted_count

    def close(self) -> None:
        self._client.close()

    @_translating
    def check(self, timeout_s: float) -> None:
        """Raise unless the server answers a ping (readiness); the caller bounds the wait."""
        self._client.admin.command("ping")

    def _miss(self, model_id: str) -> StoreError:
        """Why a compare-and-set matched nothing: the record is gone, or it changed."""
        exists = self._collection.find_one({"_id": model_id}, projection={"_id": True})
        return RevisionConflict(model_id) if exists is not None else RecordNotFound(model_id)

    def _duplicate(self, exc: DuplicateKeyError, record: ModelRecord) -> StoreError:
        """Which unique key a write broke: the server says so; a fake may not, so ask."""
        key_pattern = (exc.details or {}).get("keyPattern")
        if key_pattern is not None:
            taken = "name" in key_pattern
        else:
            other = {"name": record.name, "_id": {"$ne": record.id}}
            taken = self._collection.find_one(other, projection={"_id": True}) is not None
        if taken:
            return DuplicateName(record.name)
        return StoreError(f"model {record.id} cannot be stored: {exc}")
