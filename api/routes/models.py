"""``/v1/models``: the model lifecycle (register, list, get, update, delete).

Routes only validate, call :class:`~api.services.models.ModelService` and return a public
schema; deploying is the model-job-executor's work. Store calls run on the store's own
threads (:class:`api.store.pool.StorePool`), never on the event loop or the shared threadpool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from fastapi import APIRouter, Request, status

from api.deps import ModelServiceDep
from api.schemas import ModelCreate, ModelEnvelope, ModelList, ModelPublic, ModelUpdate
from api.store.pool import StorePool

_P = ParamSpec("_P")
_R = TypeVar("_R")

router = APIRouter(prefix="/v1/models", tags=["models"])


async def _store(request: Request, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    pool: StorePool = request.app.state.store_pool
    return await pool.run(fn, *args, **kwargs)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelEnvelope)
async def register_model(
    body: ModelCreate, service: ModelServiceDep, request: Request
) -> ModelEnvelope:
    """Register a model; it is deployed in the background and shows ``DEPLOYING`` until ready."""
    return ModelEnvelope(model=ModelPublic.of(await _store(request, service.register, body)))


@router.get("", response_model=ModelList)
async def list_models(service: ModelServiceDep, request: Request) -> ModelList:
    """Every registered model, in the product's shape and OpenAI's list shape at once."""
    return ModelList.of(await _store(request, service.list))


@router.get("/{model_id}", response_model=ModelEnvelope)
async def get_model(model_id: str, service: ModelServiceDep, request: Request) -> ModelEnvelope:
    """One model, by id or by name."""
    return ModelEnvelope(model=ModelPublic.of(await _store(request, service.get, model_id)))


@router.put("/{model_id}", response_model=ModelEnvelope)
async def update_model(
    model_id: str, body: ModelUpdate, service: ModelServiceDep, request: Request
) -> ModelEnvelope:
    """Partial update, validated against the merged record (e.g. ``{"max_instance": 6}``)."""
    updated = await _store(request, service.update, model_id, body)
    return ModelEnvelope(model=ModelPublic.of(updated))


@router.delete("/{model_id}", status_code=status.HTTP_202_ACCEPTED, response_model=ModelEnvelope)
async def delete_model(model_id: str, service: ModelServiceDep, request: Request) -> ModelEnvelope:
    """Start deleting; the model shows ``DELETING`` until its deployment is gone, then 404."""
    return ModelEnvelope(model=ModelPublic.of(await _store(request, service.delete, model_id)))


def document(openapi: dict[str, Any], max_instance_cap: int) -> dict[str, Any]:
    """``openapi`` with the instance bounds this installation accepts (AIF_MAX_INSTANCE_CAP)."""
    schemas = openapi.get("components", {}).get("schemas", {})
    for name in ("ModelCreate", "ModelUpdate"):
        properties = schemas.get(name, {}).get("properties", {})
        for field in ("max_instance", "min_instance"):
            if field in properties:
                properties[field]["maximum"] = max_instance_cap
    return openapi
