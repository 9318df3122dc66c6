"""Public request and response bodies of ``/v1/models``: the product's REST contract.

One schema family per resource: ``ModelCreate`` (register), ``ModelUpdate`` (partial update),
``ModelPublic`` (a record as users see it), ``ModelEnvelope`` and ``ModelList`` (responses).
Field rules that need no configuration live here, so the API and ``aif render`` refuse the same
input with the same words; rules that depend on settings (the ``max_instance`` cap) and on
the merged record are in :mod:`api.services.models`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from domain.keys import (
    ApiKey,
    AuditAction,
    AuditEvent,
    BudgetPeriod,
    KeyPriority,
    KeyScope,
)
from domain.presets import load_presets
from domain.records import ModelRecord, ModelStatus, format_timestamp
from domain.settings import RoutingPolicyName

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_MAX_CHARS = 63
# A label value on Kubernetes objects (xds/version): at most 63 characters, alphanumeric ends.
VERSION_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$"
# A PVC name is a DNS-1123 subdomain.
PVC_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Kubernetes label keys and values: an optional DNS-subdomain prefix (at most 253 characters)
# and "/", then a name of at most 63 characters; a value is empty or such a name.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_PREFIX_MAX_CHARS = 253
# Room for every label a file set and its team would set, not for data.
MAX_LABELS = 64

ResourceTypeName = Literal["huawei.com/ascend-1980", "nvidia.com/gpu"]


def _known_type(value: str) -> str:
    presets = load_presets()
    if value not in presets:
        raise ValueError(f"unknown model type {value!r}; available types: {', '.join(presets)}")
    return value


def _relative_path(value: str) -> str:
    if value.startswith("/"):
        raise ValueError("must be a path relative to the PVC root, not an absolute path")
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    if "\\" in value or "\x00" in value:
        raise ValueError("must not contain backslashes or NUL characters")
    return value


# What _relative_path accepts, for the document only (the validator says why it refuses).
RELATIVE_PATH_PATTERN = r"^(?!/)(?!(.*/)?\.\.(/|$))[^\\\x00]*$"

ModelName = Annotated[str, Field(min_length=1, max_length=NAME_MAX_CHARS, pattern=NAME_PATTERN)]


def _label_prefix_length(value: str) -> str:
    prefix, _, _ = value.rpartition("/")
    if len(prefix) > LABEL_PREFIX_MAX_CHARS:
        raise ValueError(
            f"the prefix before '/' must be at most {LABEL_PREFIX_MAX_CHARS} characters"
        )
    return value


LabelKey = Annotated[
    str,
    Field(min_length=1, max_length=LABEL_PREFIX_MAX_CHARS + 1 + 63, pattern=LABEL_KEY_PATTERN),
    AfterValidator(_label_prefix_length),
]
LabelValue = Annotated[str, Field(max_length=63, pattern=VERSION_PATTERN)]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(max_length=MAX_LABELS, description="Kubernetes-style labels (aif apply uses them)"),
]
ModelType = Annotated[
    str,
    AfterValidator(_known_type),
    WithJsonSchema({"type": "string", "enum": list(load_presets()), "title": "Type"}),
]


def _whole(value: object) -> object:
    """An integral float as the int it is: JSON Schema's ``integer`` counts 3.0 as one, and a
    client's encoder may write it so. Anything else is left to the strict check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Integers that also take an integral float; the bounds come first, so that the document
# states them as JSON Schema's minimum and maximum.
Whole = BeforeValidator(_whole)
InstanceCount = Annotated[int, Field(ge=1), Whole]
# min_instance 0: the model scales to zero when idle, and the next request starts an instance.
MinInstanceCount = Annotated[int, Field(ge=0), Whole]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class PvcSpec(_Body):
    name: str = Field(min_length=1, max_length=253, pattern=PVC_NAME_PATTERN)
    path: Annotated[
        str,
        Field(min_length=1, max_length=1024, json_schema_extra={"pattern": RELATIVE_PATH_PATTERN}),
        AfterValidator(_relative_path),
    ]


# pydantic documents ``gt`` on a union as a bare "gt" key, which JSON Schema ignores.
Milliseconds = Annotated[
    int | float,
    Field(gt=0),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "description": "milliseconds"}),
]


class SloSpec(_Body):
    target_time_to_first_token_p95: Milliseconds
    target_time_per_output_token_p95: Milliseconds


def _check_bounds(min_instance: int | None, max_instance: int | None) -> None:
    if min_instance is not None and max_instance is not None and min_instance > max_instance:
        raise ValueError(
            f"min_instance ({min_instance}) must not be greater than max_instance ({max_instance})"
        )


def check_resource_type(model_type: str, resource_type: str) -> None:
    preset = load_presets()[model_type]
    if resource_type not in preset.resources:
        raise ValueError(
            f"model type {model_type!r} has no template for resource_type {resource_type!r}; "
            f"supported: {', '.join(preset.resources)}"
        )


Priority = Annotated[
    int,
    Field(
        ge=-1000,
        le=1000,
        description="when cards are short, a model of higher priority takes instances above "
        "min_instance from the lowest-priority models (default 0)",
    ),
]


class ModelCreate(_Body):
    """The body of ``POST /v1/models``."""

    name: ModelName
    type: ModelType
    resource_type: ResourceTypeName = "huawei.com/ascend-1980"
    version: str = Field(default="", max_length=63, pattern=VERSION_PATTERN)
    max_instance: InstanceCount
    min_instance: MinInstanceCount
    pvc: PvcSpec
    slo: SloSpec
    description: str = Field(default="", max_length=2048)
    routing_policy: RoutingPolicyName | None = Field(
        default=None, description="how the gateway picks an instance; default: the installation's"
    )
    labels: Labels = Field(default_factory=dict)
    priority: Priority = 0

    @field_validator("min_instance")
    @classmethod
    def _min_within_max(cls, value: int, info: ValidationInfo) -> int:
        _check_bounds(value, info.data.get("max_instance"))
        return value

    @field_validator("resource_type")
    @classmethod
    def _template_exists(cls, value: str, info: ValidationInfo) -> str:
        if "type" in info.data:
            check_resource_type(info.data["type"], value)
        return value


def _without_null(schema: dict[str, Any]) -> None:
    """Absent fields are kept, null ones refused: the document offers no null."""
    for prop in schema.get("properties", {}).values():
        choices = prop.pop("anyOf", None)
        if choices is not None:
            kept = [c for c in choices if c.get("type") != "null"]
            if len(kept) == 1:
                prop.update(kept[0])
            else:
                prop["anyOf"] = kept
        prop.pop("default", None)


class ModelUpdate(_Body):
    """The body of ``PUT /v1/models/{id}``: a partial update; absent fields are kept."""

    model_config = ConfigDict(json_schema_extra=_without_null)

    type: ModelType | None = None
    resource_type: ResourceTypeName | None = None
    version: str | None = Field(default=None, max_length=63, pattern=VERSION_PATTERN)
    max_instance: InstanceCount | None = None
    min_instance: MinInstanceCount | None = None
    pvc: PvcSpec | None = None
    slo: SloSpec | None = None
    description: str | None = Field(default=None, max_length=2048)
    routing_policy: RoutingPolicyName | None = None
    labels: Labels | None = Field(default=None, description="replaces the model's labels")
    priority: Priority | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_is_immutable(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" in data:
            raise ValueError("name cannot be changed; register a new model instead")
        return data

    @field_validator("*")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            raise ValueError(f"{info.field_name} must not be null")
        return value

    @field_validator("min_instance")
    @classmethod
    def _min_within_max(cls, value: int, info: ValidationInfo) -> int:
        _check_bounds(value, info.data.get("max_instance"))
        return value


class PvcPublic(BaseModel):
    name: str
    path: str


class SloPublic(BaseModel):
    target_time_to_first_token_p95: int | float
    target_time_per_output_token_p95: int | float


class CapacityPublic(BaseModel):
    concurrency_per_instance: float | None = Field(
        default=None,
        description="requests in flight one instance holds within the SLO (null: not measured)",
    )
    tokens_per_s: float | None = Field(
        default=None, description="generated tokens per second one instance sustains there"
    )
    source: str = Field(default="", description="learnt, profile or preset ('' : none yet)")
    samples: int = 0
    measured_at: datetime | None = None

    @field_serializer("measured_at")
    def _timestamp(self, value: datetime | None) -> str | None:
        return format_timestamp(value) if value is not None else None


class ScalingPublic(BaseModel):
    decided_at: datetime | None
    from_replicas: int
    to_replicas: int
    reason: str
    inputs: dict[str, float | int | str | None]
    capacity: CapacityPublic = Field(
        default_factory=CapacityPublic, description="what one instance sustains within the SLO"
    )

    @field_serializer("decided_at")
    def _timestamp(self, value: datetime | None) -> str | None:
        return format_timestamp(value) if value is not None else None


class ModelPublic(BaseModel):
    """A registered model as the product shows it."""

    id: str
    name: str
    type: str
    resource_type: str
    version: str
    max_instance: int
    min_instance: int
    pvc: PvcPublic
    slo: SloPublic
    description: str
    routing_policy: str = Field(description="empty: the installation's default policy")
    labels: dict[str, str]
    resource_version: str = Field(
        description="changes on every write of the spec (not of the status); the ETag, and "
        "what If-Match on PUT and DELETE compares"
    )
    priority: int = 0
    status: ModelStatus
    status_code: str
    status_msg: str
    created_at: datetime
    updated_at: datetime
    instances: int = Field(description="desired instances, within [min_instance, max_instance]")
    ready_instances: int
    scaling: ScalingPublic = Field(description="the task-executor-manager's last decision")
    instance_accelerators: dict[str, list[str]] = Field(
        default_factory=dict, description="the cards (node/index) each instance holds, by id"
    )

    @field_serializer("created_at", "updated_at")
    def _timestamp(self, value: datetime) -> str:
        return format_timestamp(value)

    @classmethod
    def of(cls, record: ModelRecord) -> ModelPublic:
        data = record.model_dump(
            include=set(cls.model_fields)
            - {"instances", "resource_version", "instance_accelerators"}
        )
        cards = {e.instance_id: e.accelerators for e in record.endpoints if e.accelerators}
        return cls(
            **data,
            instances=record.replicas,
            resource_version=str(record.resource_version),
            instance_accelerators=cards,
        )


class ModelEnvelope(BaseModel):
    model: ModelPublic


class OpenAIModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aif"


class ModelList(BaseModel):
    """The product's ``{"models": [...]}`` and OpenAI's list shape, in one body."""

    models: list[ModelPublic]
    object: Literal["list"] = "list"
    data: list[OpenAIModelCard]

    @classmethod
    def of(cls, records: list[ModelRecord]) -> ModelList:
        return cls(
            models=[ModelPublic.of(r) for r in records],
            data=[
                OpenAIModelCard(id=r.name, created=int(r.created_at.timestamp())) for r in records
            ],
        )


# --- API keys and the audit trail ----------------------------------------------------------

KeyName = Annotated[str, Field(min_length=1, max_length=NAME_MAX_CHARS, pattern=NAME_PATTERN)]
RequestsPerMinute = Annotated[int, Field(ge=1, le=10_000_000), Whole]
TokensPerMinute = Annotated[int, Field(ge=1, le=10_000_000_000), Whole]
TokenBudget = Annotated[int, Field(ge=1, le=10**15), Whole]
KeyWeight = Annotated[float, Field(gt=0, le=1000)]


class AdminKeyCreate(_Body):
    """An admin key: everything, on every model."""

    name: KeyName
    scope: Literal["admin"]
    rpm: RequestsPerMinute | None = Field(default=None, description="requests per minute")
    tpm: TokensPerMinute | None = Field(default=None, description="tokens per minute (usage)")
    token_budget: TokenBudget | None = Field(
        default=None,
        description="tokens (prompt and completion) per budget_period; none: no budget",
    )
    budget_period: BudgetPeriod = Field(
        default="month", description="when the budget starts again: each UTC day or month"
    )
    weight: KeyWeight = Field(
        default=1.0, description="share of a saturated model's slots against other waiting keys"
    )
    priority: KeyPriority = Field(
        default="interactive", description="batch requests wait behind interactive ones"
    )


class InferenceKeyCreate(AdminKeyCreate):
    """An inference key: lists and uses models (``models`` only, when given); no writes."""

    scope: Literal["inference"]  # type: ignore[assignment]
    models: list[ModelName] | None = Field(
        default=None, min_length=1, description="the model names it may see and use (default: all)"
    )


_KEY_VARIANTS: TypeAdapter[AdminKeyCreate | InferenceKeyCreate] = TypeAdapter(
    Annotated[AdminKeyCreate | InferenceKeyCreate, Field(discriminator="scope")]
)


class KeyCreate(_Body):
    """The body of ``POST /v1/keys``.

    Validated as one model, so that an error names the field in the API's words; documented
    as the two shapes it accepts (only an inference key takes ``models``).
    """

    name: KeyName
    scope: KeyScope = Field(description="admin: everything; inference: models and inference")
    models: list[ModelName] | None = Field(
        default=None,
        min_length=1,
        description="inference keys only: the model names it may see and use (default: all)",
    )
    rpm: RequestsPerMinute | None = Field(default=None, description="requests per minute")
    tpm: TokensPerMinute | None = Field(default=None, description="tokens per minute (usage)")
    token_budget: TokenBudget | None = Field(
        default=None,
        description="tokens (prompt and completion) per budget_period; none: no budget",
    )
    budget_period: BudgetPeriod = Field(
        default="month", description="when the budget starts again: each UTC day or month"
    )
    weight: KeyWeight = Field(
        default=1.0, description="share of a saturated model's slots against other waiting keys"
    )
    priority: KeyPriority = Field(
        default="interactive", description="batch requests wait behind interactive ones"
    )

    @field_validator("models")
    @classmethod
    def _models_for_inference_only(
        cls, value: list[str] | None, info: ValidationInfo
    ) -> list[str] | None:
        if value is not None and info.data.get("scope") == "admin":
            raise ValueError("only an inference key can be limited to models")
        return value

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(_KEY_VARIANTS.core_schema)


# KeyUpdate's fields that hold a value always: null is refused, and the document offers none.
_KEY_SETTINGS = frozenset({"name", "budget_period", "weight", "priority"})


def _settings_without_null(schema: dict[str, Any]) -> None:
    for name, prop in schema.get("properties", {}).items():
        if name in _KEY_SETTINGS:
            choices = [c for c in prop.pop("anyOf", []) if c.get("type") != "null"]
            if len(choices) == 1:
                prop.update(choices[0])
        prop.pop("default", None)


class KeyUpdate(_Body):
    """The body of ``PUT /v1/keys/{key_id}``: fields given replace, absent fields stay, and
    null clears a limit (``models``, ``rpm``, ``tpm``, ``token_budget``). The secret and the
    scope stay: a new scope is a new key."""

    model_config = ConfigDict(json_schema_extra=_settings_without_null)

    name: KeyName | None = None
    models: list[ModelName] | None = Field(
        default=None, min_length=1, description="inference keys only; null: every model"
    )
    rpm: RequestsPerMinute | None = Field(default=None, description="null: no limit")
    tpm: TokensPerMinute | None = Field(default=None, description="null: no limit")
    token_budget: TokenBudget | None = Field(default=None, description="null: no budget")
    budget_period: BudgetPeriod | None = None
    weight: KeyWeight | None = None
    priority: KeyPriority | None = None

    @field_validator(*_KEY_SETTINGS)
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            raise ValueError(f"{info.field_name} must not be null")
        return value


class KeyPublic(BaseModel):
    """A key as ``/v1/keys`` shows it: never its secret, only the secret's first characters."""

    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    scope: KeyScope
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    token_budget: int | None
    budget_period: BudgetPeriod
    weight: float
    priority: KeyPriority
    prefix: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    @field_serializer("created_at")
    def _timestamp(self, value: datetime) -> str:
        return format_timestamp(value)

    @field_serializer("revoked_at")
    def _revoked(self, value: datetime | None) -> str | None:
        return format_timestamp(value) if value is not None else None

    @classmethod
    def of(cls, key: ApiKey) -> KeyPublic:
        return cls(**key.model_dump(exclude={"secret_hash"}))


class KeyCreated(BaseModel):
    key: KeyPublic
    secret: str = Field(description="the key itself, shown this once: aif keeps only its hash")


class KeyEnvelope(BaseModel):
    key: KeyPublic


class KeyList(BaseModel):
    keys: list[KeyPublic]
    object: Literal["list"] = "list"


class AuditEventPublic(BaseModel):
    """One change: who (a key id, ``scaler``, ``cli`` or ``anonymous``), what, when."""

    id: str
    at: datetime
    actor: str
    action: AuditAction
    model_id: str
    model_name: str
    key_id: str
    changes: dict[str, dict[str, Any]] = Field(
        description='each changed field: {"from": before, "to": after}'
    )
    reason: str

    @field_serializer("at")
    def _timestamp(self, value: datetime) -> str:
        return format_timestamp(value)

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventPublic:
        return cls(**event.model_dump())


class AuditList(BaseModel):
    events: list[AuditEventPublic]
    object: Literal["list"] = "list"


class AcceleratorInventory(BaseModel):
    """``GET /v1/accelerators``: every card, totals per resource type and per node."""

    totals: dict[str, dict[str, int]] = Field(description="resource type: cards per state")
    nodes: list[dict[str, Any]] = Field(description="per node: resource type, cards per state")
    cards: list[dict[str, Any]] = Field(
        description="node, index, resource_type, state; model and instance_id when allocated; "
        "quarantine (reason, since, by, faults) when quarantined"
    )


class CardQuarantine(_Body):
    reason: str = Field(min_length=1, max_length=500, description="why, for the audit trail")


class CardChange(BaseModel):
    node: str
    index: int
    state: str
    changed: bool
