"""Model presets: the product's nine built-in templates, as data.

Each preset is one YAML file in ``infra/models/`` (the templates ship with the deployment
code, as data: nothing here imports :mod:`infra`), named after the model type a user passes as
``type`` when registering. A preset says what a model *is* (its architecture, which drives
tensor-parallel and memory sizing), how vLLM should serve it, what each supported accelerator
needs per instance, and how the embedded simulator should behave for it. Turning a preset into
Kubernetes objects is left to :mod:`infra.manifests`; starting local engines from it is left to
the local deployer.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

# The templates are data files of the installation, not code of this package.
PRESETS_DIR = Path(__file__).resolve().parent.parent / "infra" / "models"

ResourceType = Literal["huawei.com/ascend-1980", "nvidia.com/gpu"]
SUPPORTED_RESOURCE_TYPES: tuple[ResourceType, ...] = ("huawei.com/ascend-1980", "nvidia.com/gpu")

# Memory per accelerator card in GB, for sizing checks (Ascend 910B / Snt9B: 64 GB; H100: 80 GB).
CARD_MEMORY_GB: dict[str, int] = {"huawei.com/ascend-1980": 64, "nvidia.com/gpu": 80}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Architecture(_Frozen):
    """The facts of a model's transformer that sizing depends on."""

    params_billions: float = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    bytes_per_param: int = Field(default=2, gt=0, description="bf16 weights")

    @property
    def weights_gb(self) -> float:
        return self.params_billions * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        # K and V, per layer, per KV head, in the same dtype as the weights.
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.bytes_per_param


class VllmArgs(_Frozen):
    """Engine arguments shared by every resource type."""

    max_num_seqs: int = Field(gt=0)
    max_model_len: int = Field(gt=0)
    max_num_batched_tokens: int = Field(gt=0)
    block_size: int = Field(gt=0)
    gpu_memory_utilization: float = Field(gt=0, le=1)
    trust_remote_code: bool = True
    extra_args: tuple[str, ...] = ()


class ResourceProfile(_Frozen):
    """What one instance needs on one accelerator type."""

    image: str
    container_name: str = "vllm"
    accelerators: int = Field(gt=0, description="cards per instance, over all its nodes")
    nodes: int = Field(default=1, gt=0, description="pods per instance (LWS group size)")
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    env: dict[str, str] = Field(default_factory=dict)
    # Memory of one card in GB; unset, the resource type's usual card (CARD_MEMORY_GB).
    accelerator_memory_gb: int | None = Field(default=None, gt=0)

    @property
    def accelerators_per_node(self) -> int:
        return self.accelerators // self.nodes


class SimulatorProfile(_Frozen):
    """Latency model of the embedded engine simulator for this model.

    Costs are per scheduler step, like vLLM's: a step prefills admitted prompts and decodes one
    token for every running sequence.
    """

    prefill_ms_per_token: float = Field(gt=0)
    decode_step_base_ms: float = Field(gt=0)
    decode_ms_per_running_seq: float = Field(ge=0)
    # A decode step reads every running sequence's KV cache: its cost grows with the context
    # the batch holds (vLLM's paged attention is memory-bound), per context token.
    decode_ms_per_context_token: float = Field(default=0.0, ge=0)
    kv_cache_blocks: int = Field(gt=0)
    startup_s: float = Field(ge=0)


class Preset(_Frozen):
    name: str
    hf_repo: str
    architecture: Architecture
    vllm: VllmArgs
    env: dict[str, str] = Field(default_factory=dict)
    resources: dict[ResourceType, ResourceProfile]
    simulator: SimulatorProfile

    def profile(self, resource_type: str) -> ResourceProfile:
        return self.resources[resource_type]  # type: ignore[index]


@cache
def load_presets(directory: Path = PRESETS_DIR) -> dict[str, Preset]:
    """All presets in ``directory``, keyed by model type (the file's ``name``)."""
    presets: dict[str, Preset] = {}
    for path in sorted(directory.glob("*.yaml")):
        preset = Preset.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        presets[preset.name] = preset
    return presets


# An engine whose preset is unknown serves this many at once (vLLM's default max-num-seqs).
DEFAULT_MAX_NUM_SEQS = 256


def instance_capacity(model_type: str, override: int = 0) -> int:
    """Requests one instance of ``model_type`` serves at once: ``override``, else the preset's
    ``max-num-seqs`` (past it the engine queues inside, and every request waits longer)."""
    if override:
        return override
    preset = load_presets().get(model_type)
    return preset.vllm.max_num_seqs if preset else DEFAULT_MAX_NUM_SEQS


def card_shape(model_type: str, resource_type: str) -> tuple[int, int]:
    """(cards per pod, pods) one instance of ``model_type`` needs on ``resource_type``: its
    preset's profile, one card for an unknown preset or resource type."""
    preset = load_presets().get(model_type)
    profile = next(
        (p for kind, p in (preset.resources.items() if preset else ()) if kind == resource_type),
        None,
    )
    if profile is None:
        return 1, 1
    return profile.accelerators_per_node, profile.nodes


def preset_names() -> list[str]:
    return list(load_presets())


__all__ = [
    "CARD_MEMORY_GB",
    "SUPPORTED_RESOURCE_TYPES",
    "Architecture",
    "Preset",
    "ResourceProfile",
    "ResourceType",
    "SimulatorProfile",
    "VllmArgs",
    "card_shape",
    "instance_capacity",
    "load_presets",
    "preset_names",
]
