"""``/v1/keys`` (create, list, update, revoke keys) and ``/v1/audit`` (every change): admin only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from api.deps import AdminDep, AuditTrailDep, KeyServiceDep, in_store
from api.schemas import (
    AuditEventPublic,
    AuditList,
    KeyCreate,
    KeyCreated,
    KeyEnvelope,
    KeyList,
    KeyPublic,
    KeyUpdate,
)

router = APIRouter(tags=["keys"])

Limit = Annotated[int, Query(ge=1, le=1000, description="the latest this many, oldest first")]


@router.post(
    "/v1/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
)
async def create_key(
    body: KeyCreate, admin: AdminDep, service: KeyServiceDep, request: Request
) -> KeyCreated:
    """Create a key; its secret is in this answer only (aif keeps its hash)."""
    key, secret = await in_store(request, service.create, body, admin.key_id)
    return KeyCreated(key=KeyPublic.of(key), secret=secret)


@router.get("/v1/keys", response_model=KeyList)
async def list_keys(_: AdminDep, service: KeyServiceDep, request: Request) -> KeyList:
    """Every key, revoked ones too (``revoked_at``), without secrets."""
    return KeyList(keys=[KeyPublic.of(k) for k in await in_store(request, service.list)])


@router.put("/v1/keys/{key_id}", response_model=KeyEnvelope)
async def update_key(
    key_id: str, body: KeyUpdate, admin: AdminDep, service: KeyServiceDep, request: Request
) -> KeyEnvelope:
    """Change a key's limits or name, keeping its secret: at once here, within
    ``AIF_KEYS_REFRESH_S`` everywhere else."""
    key = await in_store(request, service.update, key_id, body, admin.key_id)
    return KeyEnvelope(key=KeyPublic.of(key))


@router.delete("/v1/keys/{key_id}", response_model=KeyEnvelope)
async def revoke_key(
    key_id: str, admin: AdminDep, service: KeyServiceDep, request: Request
) -> KeyEnvelope:
    """Revoke a key: refused at once here, within ``AIF_KEYS_REFRESH_S`` everywhere else."""
    key = await in_store(request, service.revoke, key_id, admin.key_id)
    return KeyEnvelope(key=KeyPublic.of(key))


@router.get("/v1/audit", response_model=AuditList)
async def audit_trail(
    _: AdminDep, trail: AuditTrailDep, request: Request, limit: Limit = 100
) -> AuditList:
    """Every recorded change: models registered, updated, deleted, scaled; keys made, revoked."""
    events = await in_store(request, trail.events, limit)
    return AuditList(events=[AuditEventPublic.of(e) for e in events])
