"""The stored model document: desired spec, observed state, and the executor's bookkeeping.

A record is what every store persists and every role reads. The frontend writes the desired
spec (and bumps ``generation`` when the deployment must change); the model-job-executor writes
the observed state, the lease and the retry bookkeeping. ``revision`` is the optimistic
concurrency token: stores refuse a write whose ``revision`` is not the stored one.
Public views of a record are the API's (:mod:`api.schemas`).
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field


class ModelStatus(enum.StrEnum):
    DEPLOYING = "DEPLOYING"
    ACTIVE = "ACTIVE"
    UPDATING = "UPDATING"
    # Scaled to zero instances; the next request starts one (and waits for it).
    IDLE = "IDLE"
    DELETING = "DELETING"
    FAILED = "FAILED"


def within_bounds(replicas: int, min_instance: int, max_instance: int) -> int:
    """``replicas`` moved into ``[min_instance, max_instance]``: the one bounds rule."""
    return max(min_instance, min(max_instance, replicas))


def new_model_id() -> str:
    """32 lowercase hex characters, as the product's ids."""
    return secrets.token_hex(16)


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    """``2025-04-29T17:10:08.673Z``: UTC, milliseconds, ``Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Pvc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: str


class Slo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_time_to_first_token_p95: int | float
    target_time_per_output_token_p95: int | float


class Endpoint(BaseModel):
    """One serving instance as the gateway reaches it."""

    instance_id: str
    url: str
    ready: bool = True
    # The cards it holds, ``node/index`` (local engines; empty without an inventory).
    accelerators: list[str] = Field(default_factory=list)


class Capacity(BaseModel):
    """What one instance of the model sustains within its SLO, as measured (see
    :mod:`scaler.capacity`). ``concurrency_per_instance`` None: not measured yet (the scaler
    sizes by the engine's max-num-seqs)."""

    # Requests in flight one instance holds with p95 TTFT and TPOT within their targets.
    concurrency_per_instance: float | None = None
    # Generated tokens per second one instance sustains at that concurrency (None: not known).
    tokens_per_s: float | None = None
    # "learnt" (from the gateway's samples while serving), "profile" (``aif profile``), or
    # "preset" (another model of the same type and resource type).
    source: str = ""
    # Passes (or profile steps) the figure rests on.
    samples: int = 0
    measured_at: datetime | None = None


class Scaling(BaseModel):
    """The task-executor-manager's last decision for a model, as it was made."""

    decided_at: datetime | None = None
    from_replicas: int = 0
    to_replicas: int = 0
    reason: str = ""
    # Every input that led to the decision (latency ratios, rates, queue, estimates).
    inputs: dict[str, float | int | str | None] = Field(default_factory=dict)
    # What one instance sustains within the SLO, measured; kept across decisions.
    capacity: Capacity = Field(default_factory=Capacity)


class ModelRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    # The product's fields.
    id: str = Field(default_factory=new_model_id)
    name: str
    type: str
    resource_type: str
    version: str = ""
    max_instance: int
    min_instance: int
    pvc: Pvc
    slo: Slo
    description: str = ""
    # Beyond the product: how the gateway picks an instance ("" means the installation's).
    routing_policy: str = ""
    # Beyond the product: key/value pairs a user sets (``aif apply`` records its file set here).
    labels: dict[str, str] = Field(default_factory=dict)
    # Beyond the product: when cards are short, a higher priority takes a lower one's spare
    # instances (above their min_instance).
    priority: int = 0
    status: ModelStatus = ModelStatus.DEPLOYING
    status_code: str = ""
    status_msg: str = ""
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now)

    # Desired state beyond the product's fields.
    replicas: int = Field(description="desired instances, kept within [min_instance, max_instance]")
    generation: int = 1

    # The last scaling decision, written by the task-executor-manager.
    scaling: Scaling = Field(default_factory=Scaling)

    # Observed state, written by the model-job-executor.
    observed_generation: int = 0
    ready_instances: int = 0
    endpoints: list[Endpoint] = Field(default_factory=list)

    # Executor bookkeeping.
    lease_owner: str = ""
    lease_expires_at: float = 0.0
    attempts: int = 0
    next_attempt_at: float = 0.0

    # Optimistic concurrency: bumped by the store on every successful write.
    revision: int = 0
    # The version of the spec (SPEC_FIELDS): the store bumps it on a write that changes the
    # spec, never on a status-only one (see stamp_spec_version), so If-Match holds while the
    # scaler and the executor write the model.
    resource_version: int = 0
    spec_digest: str = ""

    def within_bounds(self, replicas: int) -> int:
        """``replicas`` moved into this model's ``[min_instance, max_instance]``."""
        return within_bounds(replicas, self.min_instance, self.max_instance)

    @property
    def deleting(self) -> bool:
        return self.status is ModelStatus.DELETING

    def touch(self) -> None:
        self.updated_at = utc_now()


# What users write: the fields of a register body. A write that changes none of them (the
# scaler's replicas, the executor's status) keeps the resource_version.
SPEC_FIELDS = frozenset(
    {
        "name", "type", "resource_type", "version", "max_instance", "min_instance", "pvc", "slo",
        "description", "routing_policy", "labels", "priority",
    }
)  # fmt: skip


def spec_digest(record: ModelRecord) -> str:
    """A digest of the record's spec: equal specs, equal digests."""
    spec = record.model_dump(mode="json", include=set(SPEC_FIELDS))
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def stamp_spec_version(record: ModelRecord) -> ModelRecord:
    """``record`` as a store writes it: ``resource_version`` + 1 when its spec differs from the
    spec it was read with (``spec_digest``, as stored), unchanged otherwise.

    Every store calls it on create and on replace; under the compare-and-set on ``revision``
    the digest a writer read is the stored one, so no spec change is ever missed.
    """
    digest = spec_digest(record)
    if digest == record.spec_digest and record.resource_version > 0:
        return record
    return record.model_copy(
        update={"resource_version": record.resource_version + 1, "spec_digest": digest}
    )
