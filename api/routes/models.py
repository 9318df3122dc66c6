"""``/v1/models``: the model lifecycle (register, list, get, update, delete) and its events.

Routes only validate, call :class:`~api.services.models.ModelService` and return a public
schema; deploying is the model-job-executor's work. Store calls run on the store's own
threads (:class:`api.store.pool.StorePool`), never on the event loop or the shared threadpool.
Reads show an inference key only the models it may use (another is a 404, as if it did not
exist); writes need an admin key, and name it in the audit trail.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status

from api.deps import AdminDep, AuditTrailDep, ModelServiceDep, PrincipalDep, in_store
from api.errors import ModelNotFound
from api.schemas import (
    AuditEventPublic,
    AuditList,
    ModelCreate,
    ModelEnvelope,
    ModelList,
    ModelPublic,
    ModelUpdate,
)

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelEnvelope,
)
async def register_model(
    body: ModelCreate, service: ModelServiceDep, admin: AdminDep, request: Request
) -> ModelEnvelope:
    """Register a model; it is deployed in the background and shows ``DEPLOYING`` until ready."""
    record = await in_store(request, service.register, body, admin.key_id)
    return ModelEnvelope(model=ModelPublic.of(record))


@router.get("", response_model=ModelList)
async def list_models(
    service: ModelServiceDep, principal: PrincipalDep, request: Request
) -> ModelList:
    """Every registered model the key may use, in the product's shape and OpenAI's at once."""
    records = await in_store(request, service.list)
    return ModelList.of([r for r in records if principal.may_use(r.name)])


@router.get("/{model_id}", response_model=ModelEnvelope)
async def get_model(
    model_id: str, service: ModelServiceDep, principal: PrincipalDep, request: Request
) -> ModelEnvelope:
    """One model, by id or by name."""
    record = await in_store(request, service.get, model_id)
    if not principal.may_use(record.name):
        raise ModelNotFound(f"model {model_id!r} not found", param="id")
    return ModelEnvelope(model=ModelPublic.of(record))


@router.put("/{model_id}", response_model=ModelEnvelope)
async def update_model(
    model_id: str, body: ModelUpdate, service: ModelServiceDep, admin: AdminDep, request: Request
) -> ModelEnvelope:
    """Partial update, validated against the merged record (e.g. ``{"max_instance": 6}``)."""
    updated = await in_store(request, service.update, model_id, body, admin.key_id)
    return ModelEnvelope(model=ModelPublic.of(updated))


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ModelEnvelope,
)
async def delete_model(
    model_id: str, service: ModelServiceDep, admin: AdminDep, request: Request
) -> ModelEnvelope:
    """Start deleting; the model shows ``DELETING`` until its deployment is gone, then 404."""
    record = await in_store(request, service.delete, model_id, admin.key_id)
    return ModelEnvelope(model=ModelPublic.of(record))


Limit = Annotated[int, Query(ge=1, le=1000, description="the latest this many, oldest first")]


@router.get("/{model_id}/events", response_model=AuditList)
async def model_events(
    model_id: str,
    trail: AuditTrailDep,
    principal: PrincipalDep,
    request: Request,
    limit: Limit = 100,
) -> AuditList:
    """The model's recorded changes (by id or name; by id once it is deleted), oldest first."""
    events = await in_store(request, trail.model_events, model_id, limit, principal.may_use)
    return AuditList(events=[AuditEventPublic.of(e) for e in events])


def document(openapi: dict[str, Any], max_instance_cap: int) -> dict[str, Any]:
    """``openapi`` with the instance bounds this installation accepts (AIF_MAX_INSTANCE_CAP)."""
    schemas = openapi.get("components", {}).get("schemas", {})
    for name in ("ModelCreate", "ModelUpdate"):
        properties = schemas.get(name, {}).get("properties", {})
        for field in ("max_instance", "min_instance"):
            if field in properties:
                properties[field]["maximum"] = max_instance_cap
    return openapi
