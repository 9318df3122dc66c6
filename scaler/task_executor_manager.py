"""The task-executor-manager's loop: fetch percentiles, decide, write desired replicas.

For every ``ACTIVE`` model, on each interval: read a :class:`~scaler.metrics.LoadSnapshot`
from the source, step the pure policy (:func:`scaler.policy.decide`), and when the decision
differs from the desired replicas write it to the store (bumping the generation, so the
model-job-executor deploys it). The loop survives every fetch and write error; one log line
per scaling decision carries every input that led to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from domain.records import ModelRecord, ModelStatus
from domain.store import ModelStore, WriteContention, rewrite
from scaler.metrics import MetricsSource
from scaler.policy import PolicyConfig, ScalingContext, ScalingState, decide

logger = logging.getLogger(__name__)

# Requests one instance serves at once, when the caller does not say (vLLM's max-num-seqs).
DEFAULT_CAPACITY_PER_INSTANCE = 256


class TaskExecutorManager:
    """The role: one scaling pass per ``interval_s`` over every ACTIVE model.

    ``start`` begins the loop; ``stop`` ends it and closes the metrics source.
    """

    def __init__(
        self,
        store: ModelStore,
        source: MetricsSource,
        *,
        interval_s: float,
        policy: PolicyConfig | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
        capacity_of: Callable[[ModelRecord], int] = lambda _: DEFAULT_CAPACITY_PER_INSTANCE,
    ) -> None:
        self._store = store
        self._source = source
        self._interval_s = interval_s
        self._policy = policy or PolicyConfig()
        self._clock = clock
        self._on_change = on_change
        self._capacity_of = capacity_of
        self._states: dict[str, ScalingState] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="task-executor-manager")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._source.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                logger.exception("scaling pass failed; the next pass retries")
            await asyncio.sleep(self._interval_s)

    async def run_once(self) -> None:
        records = await asyncio.to_thread(self._store.list)
        active = {r.id for r in records if r.status is ModelStatus.ACTIVE}
        self._states = {k: v for k, v in self._states.items() if k in active}
        for record in records:
            if record.status is ModelStatus.ACTIVE:
                await self._scale(record)

    async def _scale(self, record: ModelRecord) -> None:
        snapshot = await self._source.fetch(record)
        ctx = ScalingContext(
            now=self._clock(),
            replicas=record.replicas,
            ready=record.ready_instances,
            min_instance=record.min_instance,
            max_instance=record.max_instance,
            ttft_target_ms=record.slo.target_time_to_first_token_p95,
            tpot_target_ms=record.slo.target_time_per_output_token_p95,
            capacity_per_instance=self._capacity_of(record),
            snapshot=snapshot,
        )
        state = self._states.get(record.id, ScalingState())
        decision, self._states[record.id] = decide(ctx, state, self._policy)
        if decision.replicas == record.replicas:
            return
        logger.info(
            "scaling decision model=%s name=%s from=%d to=%d reason=%r %s",
            record.id, record.name, record.replicas, decision.replicas, decision.reason,
            " ".join(f"{key}={value}" for key, value in decision.inputs.items()),
        )  # fmt: skip
        await asyncio.to_thread(self._write_replicas, record, decision.replicas)

    def _write_replicas(self, seen: ModelRecord, replicas: int) -> None:
        def scale(record: ModelRecord) -> ModelRecord | None:
            if record.generation != seen.generation:
                return None  # the model changed meanwhile; the next pass decides afresh
            record.replicas = record.within_bounds(replicas)
            record.generation += 1
            record.status = ModelStatus.UPDATING
            record.status_msg = f"scaling to {record.replicas} instances"
            record.touch()
            return record

        try:
            result = rewrite(self._store, seen.id, scale)
        except WriteContention:
            logger.info("model %s is changing too fast to scale; the next pass decides", seen.id)
            return
        if result is not None and result[1]:
            self._on_change()
