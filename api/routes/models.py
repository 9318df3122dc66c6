"""``/v1/models``: the model lifecycle (register, list, get, update, delete).

Routes only validate, call :class:`~api.services.models.ModelService` and return a public
schema; deploying is the model-job-executor's work.
"""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import ModelServiceDep
from api.schemas import ModelCreate, ModelEnvelope, ModelList, ModelPublic, ModelUpdate

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelEnvelope)
def register_model(body: ModelCreate, service: ModelServiceDep) -> ModelEnvelope:
    """Register a model; it is deployed in the background and shows ``DEPLOYING`` until ready."""
    return ModelEnvelope(model=ModelPublic.of(service.register(body)))


@router.get("", response_model=ModelList)
def list_models(service: ModelServiceDep) -> ModelList:
    """Every registered model, in the product's shape and OpenAI's list shape at once."""
    return ModelList.of(service.list())


@router.get("/{model_id}", response_model=ModelEnvelope)
def get_model(model_id: str, service: ModelServiceDep) -> ModelEnvelope:
    """One model, by id or by name."""
    return ModelEnvelope(model=ModelPublic.of(service.get(model_id)))


@router.put("/{model_id}", response_model=ModelEnvelope)
def update_model(model_id: str, body: ModelUpdate, service: ModelServiceDep) -> ModelEnvelope:
    """Partial update, validated against the merged record (e.g. ``{"max_instance": 6}``)."""
    return ModelEnvelope(model=ModelPublic.of(service.update(model_id, body)))


@router.delete("/{model_id}", status_code=status.HTTP_202_ACCEPTED, response_model=ModelEnvelope)
def delete_model(model_id: str, service: ModelServiceDep) -> ModelEnvelope:
    """Start deleting; the model shows ``DELETING`` until its deployment is gone, then 404."""
    return ModelEnvelope(model=ModelPublic.of(service.delete(model_id)))
