"""Persistence of model records: the :class:`ModelStore` protocol and its two stores.

Error hierarchy (all from :mod:`api.store.base`)::

    StoreError
    ├── DuplicateName       a model with that name exists (HTTP 409)
    ├── RevisionConflict    the record changed since it was read; re-read and retry
    └── RecordNotFound      no record with that id (HTTP 404)

:func:`open_store` picks the store from the settings: MongoDB when ``mongodb_url`` is set,
else the embedded SQLite file in ``data_dir``. Mapping errors to HTTP is left to the app.
"""

from __future__ import annotations

from api.settings import Settings
from api.store.base import (
    DuplicateName,
    ModelStore,
    RecordNotFound,
    RevisionConflict,
    StoreError,
)
from api.store.mongo import MongoModelStore
from api.store.sqlite import SqliteModelStore

__all__ = [
    "DuplicateName",
    "ModelStore",
    "MongoModelStore",
    "RecordNotFound",
    "RevisionConflict",
    "SqliteModelStore",
    "StoreError",
    "open_store",
]

SQLITE_FILE_NAME = "aif.db"


def open_store(settings: Settings) -> ModelStore:
    """The store the settings ask for; the caller closes it."""
    if settings.mongodb_url is not None:
        return MongoModelStore.from_url(
            settings.mongodb_url.get_secret_value(), database=settings.mongodb_database
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteModelStore(settings.data_dir / SQLITE_FILE_NAME)
