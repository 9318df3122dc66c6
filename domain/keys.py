"""API keys and the audit trail: who may do what, and who did what.

An :class:`ApiKey` is stored without its secret: only :func:`hash_secret` of it, so a copy of
the store gives no working key. Secrets are :func:`new_secret` (``sk-aif-`` and 256 random
bits), so a plain SHA-256 is enough (nothing to brute-force, unlike a password). Keys are
never deleted: a revoked key keeps its record with ``revoked_at`` set, so the audit trail can
always name it.

An :class:`AuditEvent` is one change of the control plane's state: a model registered, updated,
deleted or scaled, a key created or revoked, with who (a key id, ``scaler``, ``cli``
``chat-job-executor`` waking a model scaled to zero, or ``anonymous`` when no key is
configured), what (each changed field, before and after) and when. Event ids sort in time order
in every store.

A :class:`Flow` is whose requests they are as a saturated model's wait queue sees them (the
key, its weight and its priority class); the queue itself is the gateway's
(:mod:`api.chat_job_executor.admission`).
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.records import utc_now

SECRET_PREFIX = "sk-aif-"
# Who the bootstrap admin key (AIF_ADMIN_KEY) is in the audit trail: it has no stored record.
BOOTSTRAP_KEY_ID = "bootstrap-admin"
# Who changes state when no key is configured (an open installation).
ANONYMOUS = "anonymous"
SCALER = "scaler"
# The gateway starting an instance of a model scaled to zero for a waiting request.
ACTIVATOR = "chat-job-executor"
CLI = "cli"

KeyScope = Literal["admin", "inference"]
# How often a key's token budget starts again: each UTC day, or each UTC calendar month.
BudgetPeriod = Literal["day", "month"]
# A key's class when a model is saturated: interactive requests are admitted before batch ones.
KeyPriority = Literal["interactive", "batch"]


# What a request may send in ``x-priority`` to lower its own class below its key's.
PRIORITY_HEADER = b"x-priority"


@dataclass(frozen=True)
class Flow:
    """One key's requests in a saturated model's wait queue: its share and its class."""

    key_id: str = ANONYMOUS
    # Slots granted in proportion to it against other flows waiting; > 0 (the keys API checks).
    weight: float = 1.0
    priority: KeyPriority = "interactive"

    def lowered(self, requested: str | None) -> Flow:
        """This flow in the class a request asks for: its key's class, or batch below it."""
        if requested is not None and requested.strip().lower() == "batch":
            return replace(self, priority="batch")
        return self


# Every caller without a key of its own (no key configured, the bootstrap admin): one flow.
SHARED_FLOW = Flow()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=new_key_id)
    name: str
    scope: KeyScope
    # Model names the key may use; None: every model.
    models: list[str] | None = None
    # Requests and tokens per minute; None: no limit.
    rpm: int | None = None
    tpm: int | None = None
    # Tokens (prompt and completion) per budget period; None: no budget.
    token_budget: int | None = None
    budget_period: BudgetPeriod = "month"
    # Share of a saturated model's slots against other keys waiting (weighted fair queuing).
    weight: float = 1.0
    priority: KeyPriority = "interactive"
    # SHA-256 of the secret, hex; the secret itself is never stored.
    secret_hash: str
    # The secret's first characters, so a user can tell keys apart.
    prefix: str
    created_at: datetime = Field(default_factory=utc_now)
    created_by: str = ""
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def flow(self) -> Flow:
        return Flow(self.id, self.weight, self.priority)


class AuditAction(enum.StrEnum):
    MODEL_REGISTER = "model.register"
    MODEL_UPDATE = "model.update"
    MODEL_DELETE = "model.delete"
    MODEL_SCALE = "model.scale"
    # A model's spare instances lent to a higher-priority one short of cards, or given back.
    MODEL_PREEMPT = "model.preempt"
    KEY_CREATE = "key.create"
    KEY_UPDATE = "key.update"
    KEY_REVOKE = "key.revoke"
    # A card taken out of service (an engine's device fault, or an admin) or given back.
    ACCELERATOR_QUARANTINE = "accelerator.quarantine"
    ACCELERATOR_RELEASE = "accelerator.release"


def new_event_id() -> str:
    """Sorts in time order: nanoseconds since the epoch, then random bits against ties."""
    return f"evt_{time.time_ns():020d}{secrets.token_hex(4)}"


class AuditEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=new_event_id)
    at: datetime = Field(default_factory=utc_now)
    # A key id, or SCALER, CLI, ANONYMOUS, BOOTSTRAP_KEY_ID.
    actor: str
    action: AuditAction
    # The model changed (empty for key events).
    model_id: str = ""
    model_name: str = ""
    # The key created or revoked (empty for model events).
    key_id: str = ""
    # Each changed field: {"from": before, "to": after}; a new model's or key's fields: "to".
    changes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Why, when there is more to say (a scaling decision's reason).
    reason: str = ""

    @classmethod
    def scale(
        cls, actor: str, model_id: str, model_name: str, before: int, after: int, reason: str
    ) -> AuditEvent:
        """A model's desired instances changed from ``before`` to ``after``."""
        return cls(
            actor=actor,
            action=AuditAction.MODEL_SCALE,
            model_id=model_id,
            model_name=model_name,
            changes={"replicas": {"from": before, "to": after}},
            reason=reason,
        )


def field_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fields whose values differ, with both values."""
    return {
        name: {"from": before.get(name), "to": value}
        for name, value in after.items()
        if before.get(name) != value
    }
