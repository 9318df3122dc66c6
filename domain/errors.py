"""The domain's errors: what goes wrong with stored models and with deployments.

Hierarchy::

    DomainError
    ├── StoreError
    │   ├── DuplicateName       a model with that name exists (HTTP 409)
    │   ├── RevisionConflict    the record changed since it was read; re-read and retry
    │   ├── RecordNotFound      no record with that id (HTTP 404)
    │   ├── WriteContention     a read-modify-write lost the race too often (HTTP 409)
    │   ├── StoreUnavailable    the store cannot answer now: locked, busy, unreachable (503)
    │   ├── StoreFull           the disk under the store is full (HTTP 507)
    │   └── StoreCorrupt        the store's file is damaged or not a database (HTTP 500)
    └── DeployerError           a deployment step failed; ``reason`` is the status_code

Nothing here knows HTTP: the API maps these to statuses in one place (:mod:`api.errors`).
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error this package defines."""


class StoreError(DomainError):
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


class WriteContention(StoreError):
    """Every attempt of a read-modify-write lost to another writer."""

    def __init__(self, model_id: str, attempts: int) -> None:
        super().__init__(
            f"model {model_id} is changing too fast: {attempts} writes in a row lost the race"
        )
        self.model_id = model_id
        self.attempts = attempts


class StoreUnavailable(StoreError):
    """The store cannot answer now (locked by another writer, busy, unreachable); retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class StoreFull(StoreError):
    """The disk (or the quota) under the store is full: nothing more can be written."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StoreCorrupt(StoreError):
    """The store's file is damaged or is not a database; ``path`` names it."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class DeployerError(DomainError):
    """A deployment step failed. ``reason`` becomes the model's ``status_code``."""

    def __init__(self, message: str, reason: str = "DeploymentError", retryable: bool = True):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retryable = retryable
