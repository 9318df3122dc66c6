"""A request's life inside the simulated engine: its sequence, its tokens, its final record.

:class:`Sequence` is the scheduler's mutable view of one request; it delivers each generated
token as a :class:`TokenEvent` through its ``on_token`` callback and leaves behind a
:class:`FinishedSequence` for request-level metrics. Deciding when tokens are produced is left
to :mod:`simulator.scheduler`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of a sequence (``index`` from 0); the last one carries its reason."""

    index: int
    finish_reason: FinishReason | None = None


@dataclass(eq=False)
class Sequence:
    """One request inside the engine.

    It generates ``output_tokens`` tokens and then finishes with ``finish_reason``. While it
    runs, ``computed`` of its ``prefill_target`` context tokens have KV; both reset when it is
    preempted, as vLLM recomputes a preempted sequence's prompt and output so far.
    """

    request_id: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: FinishReason
    arrival_s: float
    on_token: Callable[[TokenEvent], None]
    # Chained hashes of the prompt's full blocks, for the prefix cache.
    block_hashes: tuple[bytes, ...] = ()
    status: SequenceStatus = SequenceStatus.WAITING
    generated: int = 0
    computed: int = 0
    prefill_target: int = 0
    num_blocks: int = 0
    scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prefill_target


@dataclass(frozen=True)
class FinishedSequence:
    """A sequence's record once it leaves the engine, for request-level metrics."""

    request_id: str
    finish_reason: FinishReason
    prompt_tokens: int
    generation_tokens: int
    e2e_s: float
    queue_s: float | None
    time_per_output_token_s: float | None
