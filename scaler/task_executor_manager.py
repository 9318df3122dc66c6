"""The task-executor-manager's loop: fetch percentiles, decide, write desired replicas.

For every model it scales (serving, scaling, scaled to zero or starting), on each interval (and
for a model the gateway reports at capacity, through :meth:`TaskExecutorManager.nudge`, as soon
as ``pressure_pass_s`` after the last pass, so that a burst is met within a fraction of the
interval): read a :class:`~scaler.metrics.LoadSnapshot` from the source, step the pure policy
(:func:`scaler.policy.decide`), and when the decision differs from the desired replicas write it to
the store with the decision itself (the record's ``scaling``), bumping the generation so the
model-job-executor deploys it, and to the audit trail as done by ``scaler``. The loop survives every
fetch and write error; one log line per scaling decision carries every input that led to it, and
``/metrics`` what it recommends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

from prometheus_client import CollectorRegistry, Counter, Gauge

from domain.keys import SCALER, AuditAction, AuditEvent
from domain.presets import instance_capacity
from domain.records import ModelRecord, ModelStatus, Scaling, utc_now
from domain.store import ModelStore, WriteContention, audit, rewrite
from domain.wakeup import Wakeup
from scaler.capacity_store import CapacityWrites, known_capacity, learnt_capacity
from scaler.metrics import MetricsSource
from scaler.placement import hold_for_cards
from scaler.policy import Decision, PolicyConfig, ScalingContext, ScalingState, decide
from scaler.preemption import Loan, cap, plan

logger = logging.getLogger(__name__)


class ScalerMetrics:
    """The manager's decisions in ``/metrics``: what it recommends, and when it acts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.recommended = Gauge(
            "aif_scaler_recommended_instances",
            "Instances the policy recommends for the model at its last pass.",
            ["model"],
            registry=registry,
        )
        self.slo_ratio = Gauge(
            "aif_scaler_slo_ratio",
            "The worse of p95 TTFT and TPOT over their targets at the last pass (NaN: no data).",
            ["model"],
            registry=registry,
        )
        self.decisions = Counter(
            "aif_scaler_decisions",
            "Changes of desired instances the manager made, by direction.",
            ["model", "direction"],
            registry=registry,
        )
        self.pressure_passes = Counter(
            "aif_scaler_pressure_passes",
            "Passes over the model the gateway asked for (requests waiting for a slot).",
            ["model"],
            registry=registry,
        )

    def record(self, model: str, replicas: int, decision: Decision) -> None:
        self.recommended.labels(model).set(decision.replicas)
        ratio = decision.ratio
        self.slo_ratio.labels(model).set(math.nan if ratio is None else ratio)
        if decision.replicas != replicas:
            direction = "up" if decision.replicas > replicas else "down"
            self.decisions.labels(model, direction).inc()


# Models the manager scales: serving ones, ones scaling already (it keeps deciding while a
# change rolls out), ones scaled to zero, and ones starting up.
SCALED_STATUSES = frozenset(
    {ModelStatus.ACTIVE, ModelStatus.UPDATING, ModelStatus.IDLE, ModelStatus.DEPLOYING}
)


class TaskExecutorManager:
    """The role: one scaling pass per ``interval_s`` over every model it scales.

    ``start`` begins the loop; ``stop`` ends it and closes the metrics source. ``nudge`` (from
    the gateway in the same process, any thread) asks for a pass over one model soon: no sooner
    than ``pressure_pass_s`` after the previous pass (0: nudges are ignored).
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
        capacity_of: Callable[[ModelRecord], int] = lambda record: instance_capacity(record.type),
        registry: CollectorRegistry | None = None,
        pressure_pass_s: float = 0.0,
        preempt_settle_s: float = 60.0,
    ) -> None:
        self._store = store
        self._source = source
        self._interval_s = interval_s
        self._pressure_pass_s = pressure_pass_s
        self._pressed: set[str] = set()
        self._nudged = Wakeup()
        self._policy = policy or PolicyConfig()
        self._clock = clock
        self._on_change = on_change
        self._capacity_of = capacity_of
        self._metrics = ScalerMetrics(registry) if registry is not None else None
        self._states: dict[str, ScalingState] = {}
        self._capacity_writes = CapacityWrites()
        self._loans: dict[str, Loan] = {}
        self._preempt_settle_s = preempt_settle_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._nudged.bind()
        self._task = asyncio.create_task(self._loop(), name="task-executor-manager")

    def nudge(self, model_name: str) -> None:
        """The gateway has a request for ``model_name`` waiting for a slot (every one is
        taken): decide for it soon rather than at the next interval."""
        if self._pressure_pass_s > 0 and model_name not in self._pressed:
            self._pressed.add(model_name)
            self._nudged.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._source.close()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_pass = loop.time()
        while True:
            began = loop.time()
            whole = began >= next_pass
            pressed, self._pressed = self._pressed, set()
            if whole or pressed:
                try:
                    await self.run_once(None if whole else pressed)
                except Exception:
                    logger.exception("scaling pass failed; the next pass retries")
            if whole:
                next_pass = began + self._interval_s
            await self._nudged.wait(max(0.0, next_pass - loop.time()))
            # A nudge waits out the gap after the pass before it (a burst asks many times).
            soonest = min(began + self._pressure_pass_s, next_pass)
            await asyncio.sleep(max(0.0, soonest - loop.time()))

    async def run_once(self, names: set[str] | None = None) -> None:
        """One pass over every model it scales, or over those of ``names`` only."""
        records = await asyncio.to_thread(self._store.list)
        scaled = [r for r in records if r.status in SCALED_STATUSES]
        if names is None:
            self._states = {k: v for k, v in self._states.items() if k in {r.id for r in scaled}}
        await self._preempt(scaled)
        for record in scaled:
            if names is None or record.name in names:
                if names is not None and self._metrics is not None:
                    self._metrics.pressure_passes.labels(record.name).inc()
                await self._scale(record, scaled)

    async def _scale(self, record: ModelRecord, records: list[ModelRecord]) -> None:
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
            known_capacity=known_capacity(record, records),
        )
        state = self._states.get(record.id, ScalingState())
        decision, self._states[record.id] = decide(ctx, state, self._policy)
        decision = hold_for_cards(record, decision)
        decision = self._within_loan(record, decision)
        if self._metrics is not None:
            self._metrics.record(record.name, record.replicas, decision)
        learnt = self._states[record.id]
        if decision.replicas == record.replicas:
            if self._capacity_writes.due(record, learnt, ctx.now):
                await asyncio.to_thread(self._write_capacity, record, learnt)
            return
        logger.info(
            "scaling decision model=%s name=%s from=%d to=%d reason=%r %s",
            record.id, record.name, record.replicas, decision.replicas, decision.reason,
            " ".join(f"{key}={value}" for key, value in decision.inputs.items()),
        )  # fmt: skip
        await asyncio.to_thread(self._write_replicas, record, decision, learnt)
        self._capacity_writes.wrote(record.id, ctx.now)

    async def _preempt(self, records: list[ModelRecord]) -> None:
        """Lend spare instances to higher-priority models short of cards; end loans whose need
        has passed (:mod:`scaler.preemption`). Each move is logged and audited."""
        before = self._loans
        result = plan(records, before, self._clock(), self._preempt_settle_s)
        self._loans = result.loans
        events = []
        for loan in result.made:
            was = before.get(loan.lender_id)
            held = was.cap if was is not None else loan.cap + loan.taken
            logger.info(
                "preemption lender=%s borrower=%s from=%d to=%d reason=%r",
                loan.lender_name, loan.borrower_name, held, loan.cap, loan.reason,
            )  # fmt: skip
            events.append(AuditEvent(
                actor=SCALER, action=AuditAction.MODEL_PREEMPT,
                model_id=loan.lender_id, model_name=loan.lender_name,
                changes={"replicas": {"from": held, "to": loan.cap},
                         "lent_to": {"to": loan.borrower_name}},
                reason=loan.reason,
            ))  # fmt: skip
        for loan in result.ended:
            reason = f"{loan.borrower_name} no longer needs the {loan.taken} lent instances"
            logger.info(
                "preemption ended lender=%s borrower=%s reason=%r",
                loan.lender_name, loan.borrower_name, reason,
            )  # fmt: skip
            events.append(AuditEvent(
                actor=SCALER, action=AuditAction.MODEL_PREEMPT,
                model_id=loan.lender_id, model_name=loan.lender_name,
                changes={"lent_to": {"from": loan.borrower_name}}, reason=reason,
            ))  # fmt: skip
        for event in events:
            await asyncio.to_thread(audit, self._store, event)

    def _within_loan(self, record: ModelRecord, decision: Decision) -> Decision:
        """``decision``, at most the instances a loan leaves ``record``."""
        replicas, loan = cap(self._loans, record, decision.replicas)
        if loan is None:
            return decision
        return replace(
            decision,
            replicas=replicas,
            reason=f"held at {replicas}: {loan.reason}",
            inputs={**decision.inputs, "wanted_replicas": decision.replicas,
                    "lent_to": loan.borrower_name},
        )  # fmt: skip

    def _write_capacity(self, seen: ModelRecord, state: ScalingState) -> None:
        """The learnt capacity into the record, without a new generation (nothing to deploy)."""

        def keep(record: ModelRecord) -> ModelRecord | None:
            if record.deleting:
                return None
            record.scaling.capacity = learnt_capacity(state, record.scaling.capacity)
            record.touch()
            return record

        with contextlib.suppress(WriteContention):
            rewrite(self._store, seen.id, keep)
        self._capacity_writes.wrote(seen.id, self._clock())

    def _write_replicas(self, seen: ModelRecord, decision: Decision, state: ScalingState) -> None:
        def scale(record: ModelRecord) -> ModelRecord | None:
            if record.generation != seen.generation or record.deleting:
                return None  # the model changed meanwhile; the next pass decides afresh
            before = record.replicas
            record.replicas = record.within_bounds(decision.replicas)
            record.generation += 1
            record.scaling = Scaling(
                decided_at=utc_now(),
                from_replicas=before,
                to_replicas=record.replicas,
                reason=decision.reason,
                inputs=dict(decision.inputs),
                capacity=learnt_capacity(state, record.scaling.capacity),
            )
            if record.status is not ModelStatus.FAILED:
                record.status = ModelStatus.UPDATING
                record.status_msg = f"scaling from {before} to {record.replicas} instances"
            record.touch()
            return record

        try:
            result = rewrite(self._store, seen.id, scale)
        except WriteContention:
            logger.info("model %s is changing too fast to scale; the next pass decides", seen.id)
            return
        if result is not None and result[1]:
            self._on_change()
            stored = result[0]
            change = stored.scaling.from_replicas, stored.scaling.to_replicas
            event = AuditEvent.scale(SCALER, stored.id, stored.name, *change, decision.reason)
            audit(self._store, event)
