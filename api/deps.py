"""Dependencies for the routes, as ``Annotated`` aliases so routes read as typed signatures.

Everything here was built in the app's lifespan (:mod:`api.app`) and lives on ``app.state``;
tests swap it through ``app.dependency_overrides`` or by passing their own objects to
:func:`api.app.create_app`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.services.models import ModelService


def get_model_service(request: Request) -> ModelService:
    service: ModelService = request.app.state.model_service
    return service


ModelServiceDep = Annotated[ModelService, Depends(get_model_service)]
