"""API keys: create (the secret shown once), list, update limits, revoke, each audited.

The store keeps only each secret's hash (:class:`domain.keys.ApiKey`). A change made here
reaches this process's :class:`~api.auth.KeyRing` at once, other processes' within their
refresh bound. ``aif keys`` uses the same service on the store directly, with no ring.
"""

from __future__ import annotations

import logging
from typing import Protocol

from api.errors import KeyNotFound, ModelConflict
from api.schemas import KeyCreate, KeyUpdate
from domain.keys import (
    BOOTSTRAP_KEY_ID,
    ApiKey,
    AuditAction,
    AuditEvent,
    field_changes,
    hash_secret,
    new_secret,
)
from domain.records import utc_now
from domain.store import ModelStore, audit

logger = logging.getLogger(__name__)

# Characters of a secret kept in the clear, so that keys can be told apart: "sk-aif-" and 4.
PREFIX_CHARS = 11
# A key's fields the audit trail records (never its secret's hash).
SHOWN_FIELDS = {
    "name", "scope", "models", "rpm", "tpm", "token_budget", "budget_period", "weight", "priority"
}  # fmt: skip


class KeyListener(Protocol):
    def added(self, key: ApiKey) -> None: ...

    def updated(self, key: ApiKey) -> None: ...

    def revoked(self, key_id: str) -> None: ...


class KeyService:
    def __init__(self, store: ModelStore, ring: KeyListener | None = None) -> None:
        self._store = store
        self._ring = ring

    def create(self, body: KeyCreate, actor: str) -> tuple[ApiKey, str]:
        """The key as stored, and its secret (which nothing keeps)."""
        secret = new_secret()
        key = ApiKey(
            name=body.name,
            scope=body.scope,
            models=body.models,
            rpm=body.rpm,
            tpm=body.tpm,
            token_budget=body.token_budget,
            budget_period=body.budget_period,
            weight=body.weight,
            priority=body.priority,
            secret_hash=hash_secret(secret),
            prefix=secret[:PREFIX_CHARS],
            created_by=actor,
        )
        stored = self._store.create_key(key)
        if self._ring is not None:
            self._ring.added(stored)
        logger.info("API key created id=%s name=%s scope=%s", stored.id, stored.name, stored.scope)
        shown = stored.model_dump(mode="json", include=SHOWN_FIELDS)
        audit(
            self._store,
            AuditEvent(
                actor=actor,
                action=AuditAction.KEY_CREATE,
                key_id=stored.id,
                changes={name: {"to": value} for name, value in shown.items()},
            ),
        )
        return stored, secret

    def list(self) -> list[ApiKey]:
        return self._store.list_keys()

    def update(self, key_id: str, body: KeyUpdate, actor: str) -> ApiKey:
        """Replace the fields ``body`` gives; the secret stays. No change: no write, no event."""
        _refuse_bootstrap(key_id)
        key = next((k for k in self._store.list_keys() if k.id == key_id), None)
        if key is None:
            raise KeyNotFound(f"key {key_id!r} not found", param="id")
        _refuse_revoked(key)
        changes = body.model_dump(exclude_unset=True)
        if key.scope == "admin" and changes.get("models") is not None:
            # The body is valid; the stored key's scope is what refuses it.
            raise ModelConflict(
                f"key {key_id!r} is an admin key: only an inference key can be limited to models",
                param="models",
            )
        updated = key.model_copy(update=changes)
        shown = field_changes(
            key.model_dump(mode="json", include=SHOWN_FIELDS),
            updated.model_dump(mode="json", include=SHOWN_FIELDS),
        )
        if not shown:
            return key
        stored = self._store.update_key(updated)
        if stored is None:
            raise KeyNotFound(f"key {key_id!r} not found", param="id")
        _refuse_revoked(stored)  # revoked meanwhile: nothing was written
        if self._ring is not None:
            self._ring.updated(stored)
        logger.info("API key updated id=%s fields=%s", stored.id, sorted(shown))
        audit(
            self._store,
            AuditEvent(actor=actor, action=AuditAction.KEY_UPDATE, key_id=stored.id, changes=shown),
        )
        return stored

    def revoke(self, key_id: str, actor: str) -> ApiKey:
        _refuse_bootstrap(key_id)
        result = self._store.revoke_key(key_id, utc_now())
        if result is None:
            raise KeyNotFound(f"key {key_id!r} not found", param="id")
        key, revoked = result
        if self._ring is not None:
            self._ring.revoked(key.id)
        if revoked:
            logger.info("API key revoked id=%s name=%s", key.id, key.name)
            audit(
                self._store,
                AuditEvent(
                    actor=actor,
                    action=AuditAction.KEY_REVOKE,
                    key_id=key.id,
                    changes={
                        "revoked_at": {
                            "from": None,
                            "to": key.model_dump(mode="json")["revoked_at"],
                        }
                    },
                ),
            )
        return key


def _refuse_bootstrap(key_id: str) -> None:
    if key_id == BOOTSTRAP_KEY_ID:
        raise ModelConflict(
            "the bootstrap admin key is set by AIF_ADMIN_KEY (or AIF_ADMIN_KEY_FILE): change "
            "it there and restart",
            param="id",
        )


def _refuse_revoked(key: ApiKey) -> None:
    if key.revoked:
        raise ModelConflict(f"key {key.id!r} is revoked: create a new key instead", param="id")
