"""Fixtures that run the store contract against every store.

``store_kind`` names the store under test. ``store_factory`` opens a store on one backing data
set; calling it again opens another store object on the same data, as a second process or a
restart would. Kinds: ``sqlite`` (a file in ``tmp_path``), ``mongomock`` (a fake at the
pymongo boundary) and ``mongodb`` (a real server at ``$MONGODB_URL``, skipped when unset; each
test gets a database of its own, dropped afterwards). Every store a test opens is closed at
teardown.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mongomock
import pymongo
import pytest

from api.store import MongoModelStore, SqliteModelStore
from domain.store import ModelStore

StoreFactory = Callable[[], ModelStore]


def _bulk_write(
    collection: mongomock.collection.Collection, requests: list[Any], ordered: bool = True
) -> None:
    """mongomock's bulk_write predates pymongo 4.9's operations (it refuses their ``sort``):
    the same updates one by one, as the server applies an ordered bulk write."""
    for request in requests:
        if not isinstance(request, pymongo.UpdateOne):
            raise NotImplementedError(f"{type(request).__name__} in a mongomock bulk write")
        collection.update_one(request._filter, request._doc, upsert=bool(request._upsert))


def _backing(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[StoreFactory, Callable[[], None]]:
    """An opener for stores on one data set, and what removes that data set afterwards."""
    if kind == "sqlite":
        path = tmp_path / "aif.db"
        return (lambda: SqliteModelStore(path)), lambda: None
    if kind == "mongomock":
        # One fake server: its client's close() is a no-op, so stores can share it.
        monkeypatch.setattr(mongomock.collection.Collection, "bulk_write", _bulk_write)
        server: pymongo.MongoClient[dict[str, Any]] = mongomock.MongoClient()
        return (lambda: MongoModelStore(server, database="aif")), lambda: None
    url = os.environ.get("MONGODB_URL")
    if not url:
        pytest.skip("MONGODB_URL is not set")
    database = f"aif_test_{uuid.uuid4().hex[:12]}"

    def drop() -> None:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=5_000
        )
        try:
            client.drop_database(database)
        finally:
            client.close()

    return (lambda: MongoModelStore.from_url(url, database=database)), drop


@pytest.fixture(params=["sqlite", "mongomock", "mongodb"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_factory(
    store_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StoreFactory]:
    open_backing, drop = _backing(store_kind, tmp_path, monkeypatch)
    opened: list[ModelStore] = []

    def factory() -> ModelStore:
        store = open_backing()
        opened.append(store)
        return store

    try:
        yield factory
    finally:
        for store in opened:
            store.close()
        drop()


@pytest.fixture
def store(store_factory: StoreFactory) -> ModelStore:
    return store_factory()
