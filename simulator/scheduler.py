"""The simulated engine's scheduler: which sequences run in each step and what a step costs.

It mirrors vLLM's continuous batching. A FCFS waiting queue feeds a running set; every step
first serves the running sequences, oldest first (one decode token each, or the next chunk of
an unfinished prefill), then admits waiting sequences while fewer than ``max_num_seqs`` run,
the step's token budget (``max_num_batched_tokens``) lasts and the free KV blocks cover the
sequence's context plus one token. A decoding sequence grows its blocks as it generates; when
none are free the newest running sequence is preempted back to the head of the queue and
recomputes its context when readmitted. A step costs ``prefill_ms_per_token`` per uncached
prompt token plus ``decode_step_base_ms + decode_ms_per_running_seq * batch`` plus
``decode_ms_per_context_token`` per context token the decoding sequences hold (their KV cache
read each step: vLLM's decode is memory-bound); in the
fixed-latency mode (``fixed_itl_ms``) the decode part is ``fixed_itl_ms`` whatever the batch,
and ``fixed_ttft_ms`` holds a sequence in the queue until its first token is due.

The scheduler is synchronous and keeps no clock: :meth:`Scheduler.schedule` plans a step at
``now``, :meth:`Scheduler.complete` applies it at a later ``now`` and delivers the tokens.
Sleeping between the two is left to :mod:`simulator.engine`, turning the outcome
into metrics to :mod:`simulator.metrics`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from simulator.config import EngineConfig
from simulator.kv_cache import BlockPool, PrefixCache, blocks_for
from simulator.sequence import (
    FinishedSequence,
    FinishReason,
    Sequence,
    SequenceStatus,
    TokenEvent,
)


@dataclass(frozen=True)
class _Work:
    sequence: Sequence
    prefill_tokens: int
    samples_token: bool


@dataclass
class StepPlan:
    """What one step computes, decided at ``started_s``; ``cost_s`` is how long it takes."""

    started_s: float
    work: list[_Work] = field(default_factory=list)
    cost_s: float = 0.0
    prefill_tokens: int = 0
    preemptions: int = 0
    queue_times_s: list[float] = field(default_factory=list)
    prefix_queried_tokens: int = 0
    prefix_hit_tokens: int = 0

    @property
    def batch_size(self) -> int:
        return len(self.work)

    @property
    def empty(self) -> bool:
        return not self.work


@dataclass
class StepOutcome:
    """What a completed step produced, for metrics and tests."""

    plan: StepPlan
    finished_s: float
    prompt_tokens: int = 0
    generation_tokens: int = 0
    time_to_first_token_s: list[float] = field(default_factory=list)
    inter_token_latency_s: list[float] = field(default_factory=list)
    finished: list[FinishedSequence] = field(default_factory=list)


def step_cost_s(
    config: EngineConfig, prefill_tokens: int, batch_size: int, context_tokens: int = 0
) -> float:
    """Duration of one step that prefills ``prefill_tokens`` over ``batch_size`` sequences
    whose decodes read ``context_tokens`` of KV cache."""
    if batch_size == 0:
        return 0.0
    cost_ms = config.prefill_ms_per_token * prefill_tokens + config.step_base_ms
    if config.fixed_itl_ms is None:
        cost_ms += config.decode_ms_per_running_seq * batch_size
        cost_ms += config.decode_ms_per_context_token * context_tokens
    return cost_ms / 1000.0


class Scheduler:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.pool = BlockPool(config.kv_cache_blocks)
        self.prefix_cache = PrefixCache(config.kv_cache_blocks)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_cache_usage(self) -> float:
        return self.pool.usage

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def admission_delay_s(self, now: float) -> float:
        """How long until the head of the queue may be admitted (fixed-TTFT mode), else 0."""
        if not self.waiting or self.config.fixed_ttft_ms is None:
            return 0.0
        return max(0.0, self._due_s(self.waiting[0]) - now)

    def _due_s(self, sequence: Sequence) -> float:
        # Admitted one step before its first token is due: that step ends about on time.
        assert self.config.fixed_ttft_ms is not None
        lead_ms = self.config.fixed_ttft_ms - self.config.step_base_ms
        return sequence.arrival_s + max(0.0, lead_ms) / 1000.0

    def fits(self, prompt_tokens: int, output_tokens: int) -> bool:
        """Whether a sequence of this size can ever hold its KV in this engine."""
        return blocks_for(prompt_tokens + output_tokens, self.config.block_size) <= (
            self.pool.total_blocks
        )

    def add(self, sequence: Sequence) -> None:
        if not self.fits(sequence.prompt_tokens, sequence.output_tokens):
            raise ValueError(f"sequence {sequence.request_id} can never fit in the KV cache")
        sequence.status = SequenceStatus.WAITING
        self.waiting.append(sequence)

    def abort(self, sequence: Sequence, now: float) -> FinishedSequence | None:
        """Drop a sequence wherever it is; None if it had already finished."""
        if sequence.status is SequenceStatus.FINISHED:
            return None
        if sequence.status is SequenceStatus.WAITING:
            self.waiting.remove(sequence)
        else:
            self.running.remove(sequence)
            self._release(sequence)
        return self._finish(sequence, "abort", now)

    def schedule(self, now: float) -> StepPlan:
        plan = StepPlan(started_s=now)
        budget = self.config.max_num_batched_tokens
        index = 0
        while index < len(self.running) and budget > 0:
            sequence = self.running[index]
            if sequence.prefilling:
                chunk = min(sequence.prefill_target - sequence.computed, budget)
                completes = sequence.computed + chunk >= sequence.prefill_target
                plan.work.append(_Work(sequence, chunk, completes))
                budget -= chunk
            elif self._grow(sequence, plan):
                plan.work.append(_Work(sequence, 0, True))
                budget -= 1
            else:
                # The sequence preempted itself: it was the newest and nothing else was left.
                continue
            index += 1
        if not plan.preemptions:
            # As in vLLM, a step that had to preempt admits nothing: memory is short.
            self._admit(plan, budget, now)
        plan.prefill_tokens = sum(work.prefill_tokens for work in plan.work)
        context = sum(work.sequence.computed for work in plan.work if not work.prefill_tokens)
        plan.cost_s = step_cost_s(self.config, plan.prefill_tokens, plan.batch_size, context)
        return plan

    def complete(self, plan: StepPlan, now: float) -> StepOutcome:
        outcome = StepOutcome(plan=plan, finished_s=now)
        for work in plan.work:
            sequence = work.sequence
            if sequence.status is not SequenceStatus.RUNNING:
                continue  # aborted while the step ran
            sequence.computed += work.prefill_tokens
            if not work.samples_token:
                continue
            if work.prefill_tokens:
                self.prefix_cache.insert(sequence.block_hashes)
            self._emit_token(sequence, outcome, now)
        return outcome

    def _admit(self, plan: StepPlan, budget: int, now: float) -> None:
        block_size = self.config.block_size
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            sequence = self.waiting[0]
            if self.config.fixed_ttft_ms is not None and self._due_s(sequence) > now:
                break  # arrivals are in order, so nothing behind it is due either
            context = sequence.prompt_tokens + sequence.generated
            needed = blocks_for(context + 1, block_size)
            if not self.pool.can_allocate(needed):
                break  # FCFS: the head of the queue waits for blocks, nothing overtakes it
            self.waiting.popleft()
            self.pool.allocate(needed)
            sequence.num_blocks = needed
            sequence.status = SequenceStatus.RUNNING
            # vLLM always computes the last prompt token, so a full hit still prefills one.
            hit_tokens = min(
                self.prefix_cache.match(sequence.block_hashes) * block_size,
                sequence.prompt_tokens - 1,
            )
            plan.prefix_queried_tokens += sequence.prompt_tokens
            plan.prefix_hit_tokens += hit_tokens
            sequence.computed = hit_tokens
            sequence.prefill_target = context
            if sequence.scheduled_s is None:
                sequence.scheduled_s = now
                plan.queue_times_s.append(now - sequence.arrival_s)
            self.running.append(sequence)
            # A chunk samples a token only when it completes the context.
            chunk = min(context - hit_tokens, budget)
            plan.work.append(_Work(sequence, chunk, hit_tokens + chunk >= context))
            budget -= chunk

    def _grow(self, sequence: Sequence, plan: StepPlan) -> bool:
        """Give ``sequence`` the blocks for one more token, preempting the newest if needed.

        False when ``sequence`` itself had to be preempted.
        """
        context = sequence.prompt_tokens + sequence.generated + 1
        needed = blocks_for(context, self.config.block_size) - sequence.num_blocks
        while not self.pool.can_allocate(needed):
            victim = self.running[-1]
            self._preempt(victim)
            plan.preemptions += 1
            if victim is sequence:
                return False
        if needed > 0:
            self.pool.allocate(needed)
            sequence.num_blocks += needed
        return True

    def _preempt(self, sequence: Sequence) -> None:
        self.running.remove(sequence)
        self._release(sequence)
        sequence.computed = 0
        sequence.prefill_target = 0
        sequence.status = SequenceStatus.WAITING
        self.waiting.appendleft(sequence)

    def _release(self, sequence: Sequence) -> None:
        self.pool.release(sequence.num_blocks)
        sequence.num_blocks = 0

    def _emit_token(self, sequence: Sequence, outcome: StepOutcome, now: float) -> None:
        index = sequence.generated
        sequence.generated += 1
        outcome.generation_tokens += 1
        if sequence.first_token_s is None:
            sequence.first_token_s = now
            outcome.time_to_first_token_s.append(now - sequence.arrival_s)
            outcome.prompt_tokens += sequence.prompt_tokens
        elif sequence.last_token_s is not None:
            outcome.inter_token_latency_s.append(now - sequence.last_token_s)
        sequence.last_token_s = now
        if sequence.generated < sequence.output_tokens:
            sequence.on_token(TokenEvent(index))
            return
        self.running.remove(sequence)
        self._release(sequence)
        outcome.finished.append(self._finish(sequence, sequence.finish_reason, now))
        sequence.on_token(TokenEvent(index, sequence.finish_reason))

    def _finish(self, sequence: Sequence, reason: FinishReason, now: float) -> FinishedSequence:
        sequence.status = SequenceStatus.FINISHED
        per_token_s = None
        if (
            sequence.generated > 1
            and sequence.first_token_s is not None
            and sequence.last_token_s is not None
        ):
            decode_s = sequence.last_token_s - sequence.first_token_s
            per_token_s = decode_s / (sequence.generated - 1)
        queue_s = None
        if sequence.scheduled_s is not None:
            queue_s = sequence.scheduled_s - sequence.arrival_s
        return FinishedSequence(
            request_id=sequence.request_id,
            finish_reason=reason,
            prompt_tokens=sequence.prompt_tokens,
            generation_tokens=sequence.generated,
            e2e_s=now - sequence.arrival_s,
            queue_s=queue_s,
            time_per_output_token_s=per_token_s,
        )
