"""The two implementations of :class:`~domain.store.ModelStore`, and choosing between them.

The protocol, its errors and the read-modify-write helper are the domain's
(:mod:`domain.store`, :mod:`domain.errors`). :func:`open_store` picks the store from the
settings: MongoDB when ``mongodb_url`` is set, else the embedded SQLite file in ``data_dir``.
Mapping errors to HTTP is left to the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from api.store.mongo import MongoModelStore
from api.store.sqlite import SqliteModelStore, recovery_advice
from domain.errors import StoreCorrupt
from domain.settings import Settings
from domain.store import ModelStore

__all__ = [
    "CheckableStore",
    "MongoModelStore",
    "SqliteModelStore",
    "check_sqlite_file",
    "open_store",
    "preflight",
]


@runtime_checkable
class CheckableStore(Protocol):
    """A store that can say whether it would take a write now (``/ready``)."""

    def check(self, timeout_s: float) -> None: ...


SQLITE_FILE_NAME = "aif.db"
_SQLITE_HEADER = b"SQLite format 3\x00"


def open_store(settings: Settings) -> ModelStore:
    """The store the settings ask for; the caller closes it."""
    if settings.mongodb_url is not None:
        return MongoModelStore.from_url(
            settings.mongodb_url.get_secret_value(), database=settings.mongodb_database
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    check_sqlite_file(settings.data_dir / SQLITE_FILE_NAME)
    return SqliteModelStore(
        settings.data_dir / SQLITE_FILE_NAME, busy_timeout_s=settings.store_busy_timeout_s
    )


def check_sqlite_file(path: Path) -> None:
    """Refuse a store file that exists but is empty or unreadable (StoreCorrupt says why).

    aif writes the SQLite header the moment it creates the file, so an empty file is far more
    likely a truncated store (a full disk, a bad copy) than a first start: taking it as a new
    empty store would hide every registered model. Only a file that does not exist yet is new.
    """
    if not path.exists():
        return
    problem = None
    try:
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or exc})"
    else:
        if not header:
            problem = "is empty (zero bytes), which a store aif wrote never is"
        elif header != _SQLITE_HEADER:
            problem = "is not a SQLite database"
    if problem is not None:
        raise StoreCorrupt(
            f"the model store file {path} {problem}: {recovery_advice(path)}", path=str(path)
        )


def preflight(settings: Settings) -> None:
    """Before serving: the embedded store opens and reads whole, or a StoreError says why."""
    if settings.mongodb_url is not None:
        return
    store = open_store(settings)
    try:
        store.list()
    finally:
        store.close()
