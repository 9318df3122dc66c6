"""The two implementations of :class:`~domain.store.ModelStore`, and choosing between them.

The protocol, its errors and the read-modify-write helper are the domain's
(:mod:`domain.store`, :mod:`domain.errors`). :func:`open_store` picks the store from the
settings: MongoDB when ``mongodb_url`` is set, else the embedded SQLite file in ``data_dir``.
Mapping errors to HTTP is left to the app.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from api.store.mongo import MongoModelStore
from api.store.sqlite import SqliteModelStore
from domain.settings import Settings
from domain.store import ModelStore

__all__ = ["CheckableStore", "MongoModelStore", "SqliteModelStore", "open_store"]


@runtime_checkable
class CheckableStore(Protocol):
    """A store that can say whether it would take a write now (``/ready``)."""

    def check(self, timeout_s: float) -> None: ...


SQLITE_FILE_NAME = "aif.db"


def open_store(settings: Settings) -> ModelStore:
    """The store the settings ask for; the caller closes it."""
    if settings.mongodb_url is not None:
        return MongoModelStore.from_url(
            settings.mongodb_url.get_secret_value(), database=settings.mongodb_database
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteModelStore(
        settings.data_dir / SQLITE_FILE_NAME, busy_timeout_s=settings.store_busy_timeout_s
    )
