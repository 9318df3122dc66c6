"""The model registry: register, read, update and delete models in the store.

Requests only record desired state and return; the model-job-executor does the deploying.
Every write is a read-modify-write under the store's optimistic concurrency, retried on a
conflict, so an update racing the executor or another request never loses a write. Rules that
need settings (the ``max_instance`` cap) or the merged record are checked here, before anything
is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from api.errors import InvalidRequest, ModelConflict, ModelNotFound, PreconditionFailed
from api.schemas import ModelCreate, ModelUpdate, check_resource_type
from domain.keys import ANONYMOUS, AuditAction, AuditEvent, field_changes
from domain.records import ModelRecord, ModelStatus, Pvc, Slo
from domain.store import Change, DuplicateName, ModelStore, WriteContention, audit, rewrite

logger = logging.getLogger(__name__)

# Fields whose change means the running deployment must change.
DEPLOYMENT_FIELDS = ("type", "resource_type", "version", "pvc", "replicas")
# What the audit trail shows of a model: the fields a user sets, and the desired instances.
AUDITED_FIELDS = frozenset(
    {
        "name", "type", "resource_type", "version", "max_instance", "min_instance", "pvc", "slo",
        "description", "routing_policy", "labels", "priority", "replicas", "status",
    }
)  # fmt: skip


def audited(record: ModelRecord) -> dict[str, object]:
    return record.model_dump(mode="json", include=set(AUDITED_FIELDS))


def check_version(record: ModelRecord, if_match: str | None) -> None:
    """Refuse the write when ``if_match`` (an ``If-Match`` value) is not the record's version.

    Checked inside the read-modify-write, so a spec change between the check and the write
    makes the write retry and fail here rather than overwrite it.
    """
    if if_match is None:
        return
    current = str(record.resource_version)
    given = [tag.strip().removeprefix("W/").strip('"') for tag in if_match.split(",")]
    if "*" in given or current in given:
        return
    raise PreconditionFailed(
        f"model {record.name!r} is at resource_version {current}, not {if_match.strip()}: "
        "it changed since it was read; read it again",
        param="If-Match",
    )


class ModelService:
    def __init__(
        self,
        store: ModelStore,
        *,
        max_instance_cap: int,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._max_instance_cap = max_instance_cap
        self._on_change = on_change

    def _check_cap(self, max_instance: int) -> None:
        if max_instance > self._max_instance_cap:
            raise InvalidRequest(
                f"max_instance: must not be greater than {self._max_instance_cap} "
                "(the cap this installation allows; AIF_MAX_INSTANCE_CAP)",
                param="max_instance",
            )

    def _audit(
        self, action: AuditAction, actor: str, before: ModelRecord | None, after: ModelRecord
    ) -> None:
        changes = field_changes(audited(before) if before else {}, audited(after))
        if before is None:
            changes = {name: {"to": change["to"]} for name, change in changes.items()}
        event = AuditEvent(
            actor=actor, action=action, model_id=after.id, model_name=after.name, changes=changes
        )
        audit(self._store, event)

    def register(self, body: ModelCreate, actor: str = ANONYMOUS) -> ModelRecord:
        self._check_cap(body.max_instance)
        record = ModelRecord(
            name=body.name,
            type=body.type,
            resource_type=body.resource_type,
            version=body.version,
            max_instance=body.max_instance,
            min_instance=body.min_instance,
            pvc=Pvc(**body.pvc.model_dump()),
            slo=Slo(**body.slo.model_dump()),
            description=body.description,
            routing_policy=body.routing_policy or "",
            labels=dict(body.labels),
            priority=body.priority,
            # At least one to start with, as a user registering a model expects to try it;
            # a min_instance of 0 lets it scale to zero once idle.
            replicas=max(body.min_instance, 1),
            status=ModelStatus.DEPLOYING,
            status_msg="waiting for the model-job-executor",
        )
        try:
            stored = self._store.create(record)
        except DuplicateName as exc:
            raise ModelConflict(str(exc), param="name") from exc
        logger.info(
            "model registered id=%s name=%s type=%s resource_type=%s replicas=%d",
            stored.id, stored.name, stored.type, stored.resource_type, stored.replicas,
        )  # fmt: skip
        self._on_change()
        self._audit(AuditAction.MODEL_REGISTER, actor, None, stored)
        return stored

    def get(self, ref: str) -> ModelRecord:
        """A model by id, or by name when no id matches."""
        record = self._store.get(ref) or self._store.get_by_name(ref)
        if record is None:
            raise ModelNotFound(f"model {ref!r} not found", param="id")
        return record

    def list(self, labels: dict[str, str] | None = None) -> list[ModelRecord]:
        """Every model, or those carrying every one of ``labels``."""
        wanted = (labels or {}).items()
        return [r for r in self._store.list() if wanted <= r.labels.items()]

    def update(
        self,
        ref: str,
        patch: ModelUpdate,
        actor: str = ANONYMOUS,
        if_match: str | None = None,
    ) -> ModelRecord:
        changes = patch.model_dump(exclude_unset=True)
        seen: list[ModelRecord] = []

        def merge(record: ModelRecord) -> ModelRecord:
            if record.deleting:
                raise ModelConflict(f"model {record.name!r} is being deleted", param="id")
            seen.append(record.model_copy(deep=True))
            merged = self._merge(record, changes)  # a bad body is a 422 whatever the version
            check_version(record, if_match)
            return merged

        stored, written = self._rewrite(ref, merge)
        if written:
            self._audit(AuditAction.MODEL_UPDATE, actor, seen[-1], stored)
        logger.info(
            "model updated id=%s fields=%s generation=%d replicas=%d status=%s",
            stored.id, sorted(changes), stored.generation, stored.replicas, stored.status,
        )  # fmt: skip
        return stored

    def _rewrite(self, ref: str, change: Change) -> tuple[ModelRecord, bool]:
        """Read-modify-write of the model ``ref`` names (see :func:`domain.store.rewrite`)."""
        model_id = self.get(ref).id
        try:
            result = rewrite(self._store, model_id, change)
        except WriteContention as exc:
            raise ModelConflict(
                f"model {ref!r} is changing too fast; try again", param="id"
            ) from exc
        if result is None:
            raise ModelNotFound(f"model {ref!r} not found", param="id")
        stored, written = result
        if written:
            self._on_change()
        return stored, written

    def _merge(self, record: ModelRecord, changes: dict[str, object]) -> ModelRecord:
        merged = ModelRecord.model_validate({**record.model_dump(), **changes})
        if merged.min_instance > merged.max_instance:
            field = "min_instance" if "min_instance" in changes else "max_instance"
            raise InvalidRequest(
                f"{field}: min_instance ({merged.min_instance}) must not be greater than "
                f"max_instance ({merged.max_instance})",
                param=field,
            )
        self._check_cap(merged.max_instance)
        try:
            check_resource_type(merged.type, merged.resource_type)
        except ValueError as exc:
            raise InvalidRequest(f"resource_type: {exc}", param="resource_type") from exc
        merged.replicas = merged.within_bounds(record.replicas)
        if any(getattr(merged, f) != getattr(record, f) for f in DEPLOYMENT_FIELDS):
            merged.generation = record.generation + 1
            merged.attempts = 0
            merged.next_attempt_at = 0.0
            merged.status = (
                ModelStatus.UPDATING
                if record.status is ModelStatus.ACTIVE
                else ModelStatus.DEPLOYING
            )
            merged.status_code = ""
            merged.status_msg = "waiting for the model-job-executor"
        merged.touch()
        return merged

    def delete(self, ref: str, actor: str = ANONYMOUS, if_match: str | None = None) -> ModelRecord:
        seen: list[ModelRecord] = []

        def mark_deleting(record: ModelRecord) -> ModelRecord | None:
            check_version(record, if_match)
            if record.deleting:
                return None
            seen.append(record.model_copy(deep=True))
            record.status = ModelStatus.DELETING
            record.status_code = ""
            record.status_msg = "removing the deployment"
            record.attempts = 0
            record.next_attempt_at = 0.0
            record.touch()
            return record

        stored, written = self._rewrite(ref, mark_deleting)
        logger.info("model deletion requested id=%s name=%s", stored.id, stored.name)
        if written:
            self._audit(AuditAction.MODEL_DELETE, actor, seen[-1], stored)
        return stored
