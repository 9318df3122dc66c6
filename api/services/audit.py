"""Reading the audit trail: every change, or one model's.

Writing it is done where each change is made (:func:`domain.store.audit`): the model registry,
the key service, the task-executor-manager and the chat-job-executor waking a model.
"""

from __future__ import annotations

from collections.abc import Callable

from api.errors import ModelNotFound
from domain.keys import AuditEvent
from domain.store import ModelStore


class AuditTrail:
    def __init__(self, store: ModelStore) -> None:
        self._store = store

    def events(self, limit: int) -> list[AuditEvent]:
        """The latest ``limit`` changes, oldest first."""
        return self._store.events(None, limit)

    def model_events(
        self, ref: str, limit: int, may_see: Callable[[str], bool] = lambda _: True
    ) -> list[AuditEvent]:
        """A model's changes, by id or name; a deleted model's by its id. ModelNotFound when
        there is no such model, or none ``may_see`` lets the caller see."""
        record = self._store.get(ref) or self._store.get_by_name(ref)
        model_id = record.id if record is not None else ref
        events = self._store.events(model_id, limit)
        name = record.name if record is not None else (events[-1].model_name if events else "")
        if (record is None and not events) or not may_see(name):
            raise ModelNotFound(f"model {ref!r} not found", param="id")
        return events
