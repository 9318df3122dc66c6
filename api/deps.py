"""Dependencies for the routes, as ``Annotated`` aliases so routes read as typed signatures.

Everything here was built in the app's lifespan (:mod:`api.app`) and lives on ``app.state``;
tests swap it through ``app.dependency_overrides`` or by passing their own objects to
:func:`api.app.create_app`.

Who calls was settled by :class:`api.auth.KeyCheck` before the route ran
(``request.state.principal``); :data:`PrincipalDep` hands it over (and names the bearer
scheme in the OpenAPI document), :data:`AdminDep` refuses anyone but an admin key with 403.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Principal
from api.errors import Unauthorized
from api.services.audit import AuditTrail
from api.services.keys import KeyService
from api.services.models import ModelService
from api.services.usage import UsageService
from api.store.pool import StorePool

_P = ParamSpec("_P")
_R = TypeVar("_R")


async def in_store(
    request: Request, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
) -> _R:
    """Run a blocking store call on the store's own threads (api.store.pool.StorePool)."""
    pool: StorePool = request.app.state.store_pool
    return await pool.run(fn, *args, **kwargs)


# The OpenAPI name of ``Authorization: Bearer <key>``.
BEARER_SCHEME = "HTTPBearer"
_bearer = HTTPBearer(auto_error=False, scheme_name=BEARER_SCHEME)


def get_model_service(request: Request) -> ModelService:
    service: ModelService = request.app.state.model_service
    return service


def get_key_service(request: Request) -> KeyService:
    service: KeyService = request.app.state.key_service
    return service


def get_audit_trail(request: Request) -> AuditTrail:
    return AuditTrail(request.app.state.store)


def get_usage_service(request: Request) -> UsageService:
    return UsageService(request.app.state.store)


def get_principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:  # KeyCheck guards every /v1 route: this is a wiring fault
        raise Unauthorized("no API key was checked for this route")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep, request: Request) -> Principal:
    principal.require_admin(f"{request.method} {request.url.path}")
    return principal


ModelServiceDep = Annotated[ModelService, Depends(get_model_service)]
KeyServiceDep = Annotated[KeyService, Depends(get_key_service)]
AuditTrailDep = Annotated[AuditTrail, Depends(get_audit_trail)]
UsageServiceDep = Annotated[UsageService, Depends(get_usage_service)]
AdminDep = Annotated[Principal, Depends(require_admin)]
