"""The ``ModelStore`` protocol and its errors.

Every store keeps whole :class:`~api.records.ModelRecord` documents keyed by ``id`` with a
unique ``name``. Writes are compare-and-set on ``revision``: :meth:`ModelStore.replace`
succeeds only when the stored revision equals the record's, and returns the record with the
revision bumped. Callers that read-modify-write retry on :class:`RevisionConflict`, so no
concurrent update is ever lost. Implementations: :mod:`api.store.sqlite` (embedded, default)
and :mod:`api.store.mongo` (pymongo).
"""

from __future__ import annotations

from typing import Protocol

from api.records import ModelRecord


class StoreError(Exception):
    """Base of the store's errors."""


class DuplicateName(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a model named {name!r} already exists")
        self.name = name


class RevisionConflict(StoreError):
    """The record changed since it was read; read it again and retry."""

    def __init__(self, model_id: str) -> None:
        super().__init__(f"model {model_id} was changed concurrently")
        self.model_id = model_id


class RecordNotFound(StoreError):
    def __init__(self, model_id: str) -> None:
        super().__init__(f"model {model_id} not found")
        self.model_id = model_id


class ModelStore(Protocol):
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

    def close(self) -> None:
        """Release connections; calling it again does nothing."""
        ...
