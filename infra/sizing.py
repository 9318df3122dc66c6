"""Sizing rules: how one instance of a preset spreads over pods and cards, and whether it fits.

An instance is one LWS group of :func:`group_size` pods. Cards are split evenly over the pods;
vLLM runs tensor parallel within a pod (:func:`tensor_parallel`, which must divide the
attention heads) and pipeline parallel across pods (:func:`pipeline_parallel`).
:func:`check_memory` refuses a preset whose weights plus the KV cache of one
``--max-model-len`` sequence do not fit its cards. :func:`plan_parallelism` applies every rule
at once and returns a :class:`Parallelism`, or raises :class:`SizingError` naming the broken one.

Pure functions of a preset and the cluster's cards per node; nothing here renders objects or
talks to a cluster. Turning a plan into pods (and the Ray launch that joins them) is left to
:mod:`infra.manifests`. A card's memory is the profile's ``accelerator_memory_gb``, else the
usual card of its resource type (:data:`domain.presets.CARD_MEMORY_GB`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from domain.presets import CARD_MEMORY_GB, Preset, ResourceProfile, VllmArgs

# Peak activations of a max_num_batched_tokens prefill plus runtime buffers, per card.
ACTIVATION_HEADROOM_GB_PER_CARD = 4.0


class SizingError(ValueError):
    """A preset's numbers cannot work on the accelerators it asks for."""


class NodeLimits(Protocol):
    """What sizing needs of a cluster (``infra.manifests.ClusterConfig`` is one)."""

    @property
    def max_accelerators_per_node(self) -> int: ...


@dataclass(frozen=True)
class Parallelism:
    """How one instance spreads over pods and cards."""

    nodes: int
    accelerators_per_node: int
    tensor_parallel: int
    pipeline_parallel: int


def group_size(profile: ResourceProfile, cluster: NodeLimits) -> int:
    """Pods per instance: the profile's nodes, more when its cards exceed one node's."""
    cards = profile.accelerators
    nodes = max(profile.nodes, math.ceil(cards / cluster.max_accelerators_per_node))
    while cards % nodes:  # cards are split evenly; terminates at one card per pod
        nodes += 1
    return nodes


def pipeline_parallel(profile: ResourceProfile, cluster: NodeLimits) -> int:
    return group_size(profile, cluster)


def tensor_parallel(preset: Preset, profile: ResourceProfile, cluster: NodeLimits) -> int:
    """Cards per pod; vLLM shards attention heads (and KV heads) evenly over them."""
    tp = profile.accelerators // group_size(profile, cluster)
    arch = preset.architecture
    if arch.num_attention_heads % tp:
        raise SizingError(
            f"{preset.name}: tensor-parallel size {tp} does not divide "
            f"num_attention_heads={arch.num_attention_heads}; change the preset's accelerators"
        )
    if arch.num_kv_heads % tp and tp % arch.num_kv_heads:
        raise SizingError(
            f"{preset.name}: tensor-parallel size {tp} and num_kv_heads={arch.num_kv_heads} "
            "must divide one another"
        )
    return tp


def memory_required_gb(preset: Preset, cards: int) -> float:
    """Weights, the KV cache of one ``max_model_len`` sequence, and activation headroom."""
    arch = preset.architecture
    kv_gb = arch.kv_bytes_per_token * preset.vllm.max_model_len / 1e9
    return arch.weights_gb + kv_gb + ACTIVATION_HEADROOM_GB_PER_CARD * cards


def card_memory_gb(profile: ResourceProfile, resource_type: str) -> int:
    """One card's memory: what the profile says, else the resource type's usual card."""
    return profile.accelerator_memory_gb or CARD_MEMORY_GB[resource_type]


def memory_available_gb(
    resource_type: str, cards: int, vllm: VllmArgs, card_gb: int | None = None
) -> float:
    per_card = card_gb or CARD_MEMORY_GB[resource_type]
    return cards * per_card * vllm.gpu_memory_utilization


def check_memory(preset: Preset, resource_type: str) -> None:
    profile = preset.profile(resource_type)
    cards = profile.accelerators
    card_gb = card_memory_gb(profile, resource_type)
    need = memory_required_gb(preset, cards)
    have = memory_available_gb(resource_type, cards, preset.vllm, card_gb)
    if need > have:
        raise SizingError(
            f"{preset.name} on {cards} x {resource_type} of {card_gb} GB: needs {need:.1f} GB "
            f"(weights, KV cache for max_model_len={preset.vllm.max_model_len}, activations) "
            f"but gpu_memory_utilization={preset.vllm.gpu_memory_utilization} leaves {have:.1f} GB"
        )


def plan_parallelism(preset: Preset, resource_type: str, cluster: NodeLimits) -> Parallelism:
    """Every sizing rule at once; raises :class:`SizingError` naming the broken one."""
    if resource_type not in preset.resources:
        raise SizingError(f"{preset.name} has no template for resource_type {resource_type!r}")
    profile = preset.profile(resource_type)
    check_memory(preset, resource_type)
    nodes = group_size(profile, cluster)
    tp = tensor_parallel(preset, profile, cluster)
    return Parallelism(
        nodes, profile.accelerators // nodes, tp, pipeline_parallel(profile, cluster)
    )
