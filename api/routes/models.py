"""``/v1/models``: the model lifecycle (register, list, get, update, delete) and its events.

Routes only validate, call :class:`~api.services.models.ModelService` and return a public
schema; deploying is the model-job-executor's work. Store calls run on the store's own
threads (:class:`api.store.pool.StorePool`), never on the event loop or the shared threadpool.
Reads show an inference key only the models it may use (another is a 404, as if it did not
exist); writes need an admin key, and name it in the audit trail.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import TypeAdapter, ValidationError

from api.deps import AdminDep, AuditTrailDep, ModelServiceDep, PrincipalDep, in_store
from api.errors import ErrorResponse, InvalidRequest, ModelNotFound, describe_validation_errors
from api.schemas import (
    LABEL_KEY_PATTERN,
    VERSION_PATTERN,
    AuditEventPublic,
    AuditList,
    Labels,
    ModelCreate,
    ModelEnvelope,
    ModelList,
    ModelPublic,
    ModelUpdate,
)
from domain.records import ModelRecord

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


# key=value, each as a label's (documented for clients; parse_selector checks it).
SELECTOR_PATTERN = LABEL_KEY_PATTERN.removesuffix("$") + "=" + VERSION_PATTERN.removeprefix("^")
_LABELS: TypeAdapter[dict[str, str]] = TypeAdapter(Labels)

LabelSelector = Annotated[
    list[str] | None,
    Query(
        alias="label",
        description="key=value: only models with this label (repeat it: with every one)",
        json_schema_extra={"items": {"type": "string", "pattern": SELECTOR_PATTERN}},
    ),
]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description="a resource_version (or ETag): refuse with 412 if the model is no longer at it",
    ),
]
PRECONDITION_FAILED: dict[int | str, dict[str, Any]] = {
    412: {
        "description": "If-Match names a resource_version the model no longer has",
        "model": ErrorResponse,
    }
}
ETAG_HEADER = {
    "ETag": {"description": "the model's resource_version", "schema": {"type": "string"}}
}


def parse_selector(selector: list[str] | None) -> dict[str, str]:
    """``["team=search", ...]`` as a label map; a malformed one is a 422 naming it."""
    pairs: dict[str, str] = {}
    for item in selector or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidRequest(f"label: {item!r} is not key=value", param="label")
        pairs[key] = value
    try:
        return _LABELS.validate_python(pairs)
    except ValidationError as exc:
        message, _ = describe_validation_errors(list(exc.errors()))
        raise InvalidRequest(f"label: {message}", param="label") from exc


def _tagged(response: Response, record: ModelRecord) -> ModelEnvelope:
    response.headers["ETag"] = f'"{record.resource_version}"'
    return ModelEnvelope(model=ModelPublic.of(record))


@router.get("", response_model=ModelList)
async def list_models(
    service: ModelServiceDep,
    principal: PrincipalDep,
    request: Request,
    label: LabelSelector = None,
) -> ModelList:
    """Every registered model the key may use, in the product's shape and OpenAI's at once."""
    records = await in_store(request, service.list, parse_selector(label))
    return ModelList.of([r for r in records if principal.may_use(r.name)])


@router.get("/{model_id}", response_model=ModelEnvelope, responses={200: {"headers": ETAG_HEADER}})
async def get_model(
    model_id: str,
    service: ModelServiceDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
) -> ModelEnvelope:
    """One model, by id or by name; its ``resource_version`` is also the ``ETag``."""
    record = await in_store(request, service.get, model_id)
    if not principal.may_use(record.name):
        raise ModelNotFound(f"model {model_id!r} not found", param="id")
    return _tagged(response, record)


@router.put(
    "/{model_id}",
    response_model=ModelEnvelope,
    responses={200: {"headers": ETAG_HEADER}, **PRECONDITION_FAILED},
)
async def update_model(
    model_id: str,
    body: ModelUpdate,
    service: ModelServiceDep,
    admin: AdminDep,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> ModelEnvelope:
    """Partial update, validated against the merged record (e.g. ``{"max_instance": 6}``)."""
    updated = await in_store(request, service.update, model_id, body, admin.key_id, if_match)
    return _tagged(response, updated)


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ModelEnvelope,
    responses=PRECONDITION_FAILED,
)
async def delete_model(
    model_id: str,
    service: ModelServiceDep,
    admin: AdminDep,
    request: Request,
    if_match: IfMatch = None,
) -> ModelEnvelope:
    """Start deleting; the model shows ``DELETING`` until its deployment is gone, then 404."""
    record = await in_store(request, service.delete, model_id, admin.key_id, if_match)
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
