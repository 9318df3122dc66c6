"""The simulator's configuration: one engine's limits and latency profile, and its faults.

:class:`EngineConfig` is built from a model preset (:mod:`domain.presets`), the way vLLM is
started from the preset's engine arguments; :class:`Faults` is the mutable failure-injection
state that the command line sets and ``POST /admin/faults`` changes at run time. Reading the
command line is left to :mod:`simulator.__main__`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from domain.presets import Preset

# Generation length when a request sets neither max_tokens nor max_completion_tokens: short
# enough that an unbounded request cannot hold a sequence slot for minutes.
DEFAULT_MAX_TOKENS = 64


@dataclass(frozen=True)
class EngineConfig:
    """What one simulated engine instance can hold and how long its steps take."""

    served_model_name: str
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int
    kv_cache_blocks: int
    prefill_ms_per_token: float
    decode_step_base_ms: float
    decode_ms_per_running_seq: float
    # Per context token of the decoding sequences (their KV cache read each step).
    decode_ms_per_context_token: float = 0.0
    # Fixed-latency mode (benchmarks): every step costs ``fixed_itl_ms`` whatever its batch,
    # plus the prefill of uncached prompt tokens, and a sequence is admitted no sooner than
    # ``fixed_ttft_ms`` less one step after it arrived, so its first token comes about
    # ``fixed_ttft_ms`` after arrival. None keeps the preset's batch-dependent costs.
    fixed_ttft_ms: float | None = None
    fixed_itl_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.kv_cache_blocks < 1:
            raise ValueError("kv_cache_blocks must be at least 1")
        for name in ("fixed_ttft_ms", "fixed_itl_ms", "prefill_ms_per_token"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be at least 0")

    @classmethod
    def from_preset(
        cls,
        preset: Preset,
        served_model_name: str,
        max_num_seqs: int | None = None,
        *,
        fixed_ttft_ms: float | None = None,
        fixed_itl_ms: float | None = None,
        prefill_ms_per_token: float | None = None,
        kv_cache_blocks: int | None = None,
    ) -> EngineConfig:
        if prefill_ms_per_token is None:
            prefill_ms_per_token = preset.simulator.prefill_ms_per_token
        return cls(
            served_model_name=served_model_name,
            max_num_seqs=max_num_seqs if max_num_seqs is not None else preset.vllm.max_num_seqs,
            max_num_batched_tokens=preset.vllm.max_num_batched_tokens,
            max_model_len=preset.vllm.max_model_len,
            block_size=preset.vllm.block_size,
            kv_cache_blocks=kv_cache_blocks or preset.simulator.kv_cache_blocks,
            prefill_ms_per_token=prefill_ms_per_token,
            decode_step_base_ms=preset.simulator.decode_step_base_ms,
            decode_ms_per_running_seq=preset.simulator.decode_ms_per_running_seq,
            decode_ms_per_context_token=preset.simulator.decode_ms_per_context_token,
            fixed_ttft_ms=fixed_ttft_ms,
            fixed_itl_ms=fixed_itl_ms,
        )

    @property
    def step_base_ms(self) -> float:
        """What a decode step costs before its per-sequence share."""
        return self.fixed_itl_ms if self.fixed_itl_ms is not None else self.decode_step_base_ms

    @property
    def kv_cache_tokens(self) -> int:
        return self.kv_cache_blocks * self.block_size


@dataclass
class Faults:
    """Failure injection: the fraction of requests that fail, streams that stall, health.

    ``stall_after_tokens`` None means no stall; 0 means a request hangs before its first token.
    """

    error_rate: float = 0.0
    stall_after_tokens: int | None = None
    healthy: bool = True
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.stall_after_tokens is not None and self.stall_after_tokens < 0:
            raise ValueError("stall_after_tokens must be at least 0")

    def should_fail(self) -> bool:
        # The draw happens only when failing is possible, so a seeded run without injected
        # errors consumes no randomness here.
        if self.error_rate <= 0.0:
            return False
        return self.error_rate >= 1.0 or self.rng.random() < self.error_rate

    def snapshot(self) -> dict[str, object]:
        return {
            "error_rate": self.error_rate,
            "stall_after_tokens": self.stall_after_tokens,
            "healthy": self.healthy,
        }
