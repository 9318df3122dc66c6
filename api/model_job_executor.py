"""The model-job-executor: reconciles each registered model into a deployment.

Level-triggered: every pass (each ``interval_s``, and at once when notified of a change)
reads every model and drives its deployment toward the desired spec through a
:class:`~domain.deployment.Deployer`, then records what it observed. Under a lease per model
(:mod:`api.leases`) two executors never act on one model; state lives only in the
store and the deployer, so a crash at any point is recovered by the next pass of any executor.
A failing pass is retried with exponential backoff; after ``max_attempts`` in a row the model
is ``FAILED`` with the deployer's reason, until the user changes it. A model being deleted is
torn down and then removed from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from api.leases import lease_available, needs_renewal, new_owner_id
from domain.deployment import Deployer, DeployerError, DeploymentSpec, DeploymentState, Phase
from domain.records import ModelRecord, ModelStatus
from domain.store import ModelStore, remove, rewrite
from domain.wakeup import Wakeup

logger = logging.getLogger(__name__)

# At most this many models are reconciled at once by one executor: deployer calls may block
# for a while (a Pulumi update), and the rest of the models must not starve behind them.
MAX_CONCURRENT_MODELS = 8
# While a deployment is progressing, look again this soon: readiness should show in the
# status within a fraction of a second, not a whole interval later.
PROGRESS_POLL_S = 0.05


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float

    def delay_s(self, attempts: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempts - 1)))


class ModelJobExecutor:
    """The role: reconcile passes over every model, through the deployer it is given.

    ``start`` first lets the deployer clean up what a crashed run left, then begins the loop;
    ``stop`` ends the loop, hands every lease back and closes the deployer.
    """

    def __init__(
        self,
        store: ModelStore,
        deployer: Deployer,
        *,
        interval_s: float,
        lease_ttl_s: float,
        retry: RetryPolicy,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        on_observed: Callable[[], None] = lambda: None,
        on_serving: Callable[[ModelRecord], None] = lambda record: None,
    ) -> None:
        self._store = store
        self._deployer = deployer
        self._interval_s = interval_s
        self._lease_ttl_s = lease_ttl_s
        self._retry = retry
        self.owner = owner or new_owner_id()
        self._clock = clock
        self._on_observed = on_observed
        # Told of every model it observes serving (e.g. to profile it once).
        self._on_serving = on_serving
        self._changed = Wakeup()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_MODELS)
        self._task: asyncio.Task[None] | None = None

    def notify_change(self) -> None:
        """Run a pass soon: called, from any thread, after a write in this process."""
        self._changed.set()

    async def start(self) -> None:
        self._changed.bind()
        recovered = await self._deployer.recover()
        if recovered:
            logger.info("cleaned up %d leftovers of an earlier run", recovered)
        if not self._deployer.instances_outlive_executor:
            await asyncio.to_thread(self._forget_endpoints)
        self._task = asyncio.create_task(self._loop(), name="model-job-executor")

    async def stop(self) -> None:
        """Stop reconciling and hand every lease back, so another executor can take over."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        await asyncio.to_thread(self._release_all)
        await self._deployer.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once(wait=False)
            except Exception:
                logger.exception("reconcile pass failed; the next pass retries")
            await self._changed.wait(self._interval_s)

    async def run_once(self, *, wait: bool = True) -> None:
        """One pass over every model; with ``wait``, until each model's step is done."""
        records = await asyncio.to_thread(self._store.list)
        now = self._clock()
        for record in records:
            if record.id in self._inflight or not self._wants_work(record, now):
                continue
            task = asyncio.create_task(self._reconcile(record.id), name=f"reconcile-{record.id}")
            self._inflight[record.id] = task
            task.add_done_callback(self._finished)
        if wait:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        model_id = task.get_name().removeprefix("reconcile-")
        self._inflight.pop(model_id, None)

    def _wants_work(self, record: ModelRecord, now: float) -> bool:
        if record.status is ModelStatus.FAILED:
            return False
        if record.next_attempt_at > now:
            return False
        return lease_available(record, self.owner, now)

    async def _reconcile(self, model_id: str) -> None:
        async with self._slots:
            record = await asyncio.to_thread(self._take_lease, model_id)
            if record is None:
                return
            try:
                if record.deleting:
                    await self._tear_down(record)
                else:
                    await self._deploy(record)
            except asyncio.CancelledError:
                raise
            except DeployerError as exc:
                await asyncio.to_thread(self._record_failure, record, exc)
            except Exception as exc:
                logger.exception("reconcile of model %s failed", model_id)
                error = DeployerError(f"internal error: {exc}", reason="InternalError")
                await asyncio.to_thread(self._record_failure, record, error)

    async def _deploy(self, record: ModelRecord) -> None:
        spec = DeploymentSpec.from_record(record)
        state = await self._deployer.apply(spec)
        if state.phase is Phase.FAILED:
            error = DeployerError(state.message or "the deployment failed", reason=state.reason)
            await asyncio.to_thread(self._record_failure, record, error, state)
            return
        stored = await asyncio.to_thread(self._record_observation, spec, state)
        if stored is not None and stored.status is ModelStatus.ACTIVE and stored.ready_instances:
            self._on_serving(stored)
        if state.phase is Phase.PROGRESSING and not state.reason:
            # Waiting for cards (a reason) is not a start to watch closely: the interval will do.
            asyncio.get_running_loop().call_later(PROGRESS_POLL_S, self._changed.set)

    async def _tear_down(self, record: ModelRecord) -> None:
        gone = await self._deployer.remove(record.id)
        logger.info("teardown model=%s name=%s gone=%s", record.id, record.name, gone)
        if gone:
            await asyncio.to_thread(self._forget, record.id)

    # Store writes: every one a read-modify-write through domain.store.rewrite.

    def _mutate(self, model_id: str, change: Callable[[ModelRecord], bool]) -> ModelRecord | None:
        """Edit the record in place with ``change`` (False: nothing to write) and store it."""
        result = rewrite(self._store, model_id, lambda r: r if change(r) else None)
        if result is None:
            return None
        record, written = result
        if written:
            self._on_observed()
        return record

    def _take_lease(self, model_id: str) -> ModelRecord | None:
        now = self._clock()
        taken = False

        def take(record: ModelRecord) -> bool:
            nonlocal taken
            taken = lease_available(record, self.owner, now)
            if not taken or not needs_renewal(record, self.owner, now, self._lease_ttl_s):
                return False
            record.lease_owner = self.owner
            record.lease_expires_at = now + self._lease_ttl_s
            return True

        record = self._mutate(model_id, take)
        return record if record is not None and taken else None

    def _release_all(self) -> None:
        for record in self._store.list():
            if record.lease_owner != self.owner:
                continue

            def release(r: ModelRecord) -> bool:
                if r.lease_owner != self.owner:
                    return False
                r.lease_owner, r.lease_expires_at = "", 0.0
                return True

            self._mutate(record.id, release)

    def _record_observation(
        self, spec: DeploymentSpec, state: DeploymentState
    ) -> ModelRecord | None:
        def observe(record: ModelRecord) -> bool:
            before = record.model_dump(include=_OBSERVED)
            record.ready_instances = state.ready_replicas
            record.endpoints = list(state.endpoints)
            if not record.deleting:
                current = record.generation == spec.generation and record.replicas == spec.replicas
                _observed_status(record, state, done=current and state.phase is Phase.READY)
            changed = record.model_dump(include=_OBSERVED) != before
            if changed:
                record.touch()
            return changed

        return self._mutate(spec.model_id, observe)

    def _record_failure(
        self, seen: ModelRecord, error: DeployerError, state: DeploymentState | None = None
    ) -> None:
        now = self._clock()

        def fail(record: ModelRecord) -> bool:
            if record.generation != seen.generation or record.deleting != seen.deleting:
                return False  # the user changed the model meanwhile: the next pass starts afresh
            record.attempts += 1
            if state is not None:
                record.ready_instances = state.ready_replicas
                record.endpoints = list(state.endpoints)
            record.status_code = error.reason
            exhausted = record.attempts >= self._retry.max_attempts or not error.retryable
            serving = record.ready_instances > 0 and not record.deleting
            if exhausted and not record.deleting and not serving:
                record.status = ModelStatus.FAILED
                record.status_msg = error.message
            else:
                # Some instances serve: the model stays up on them, and the rest keep being
                # tried (at the longest backoff once the attempts are spent).
                delay_s = self._retry.delay_s(record.attempts)
                record.next_attempt_at = now + delay_s
                if serving:
                    record.status = ModelStatus.ACTIVE
                    waiting = record.replicas - record.ready_instances
                    record.status_msg = (
                        f"{record.ready_instances}/{record.replicas} instances ready; {waiting} "
                        f"waiting: {error.message} (retrying in {delay_s:.0f}s)"
                    )
                else:
                    record.status_msg = (
                        f"{error.message} (attempt {record.attempts} of "
                        f"{self._retry.max_attempts}, retrying in {delay_s:.0f}s)"
                    )
            record.touch()
            logger.warning(
                "reconcile failed model=%s name=%s reason=%s attempts=%d status=%s ready=%d "
                "message=%s",
                record.id, record.name, error.reason, record.attempts, record.status,
                record.ready_instances, error.message,
            )  # fmt: skip
            return True

        self._mutate(seen.id, fail)

    def _forget_endpoints(self) -> None:
        """Endpoints of engines an earlier run of this executor started are gone with it.

        Until the first pass observes the new instances, routing must not send requests to
        the old addresses, and the status must not say a model serves.
        """
        now = self._clock()
        for seen in self._store.list():
            if not seen.endpoints or not lease_available(seen, self.owner, now):
                continue

            def forget(record: ModelRecord) -> bool:
                if not record.endpoints:
                    return False
                record.endpoints, record.ready_instances = [], 0
                if record.status is ModelStatus.ACTIVE:
                    record.status = ModelStatus.DEPLOYING
                    record.status_msg = "restarting instances"
                return True

            self._mutate(seen.id, forget)

    def _forget(self, model_id: str) -> None:
        record = remove(self._store, model_id)
        if record is not None:
            logger.info("model removed model=%s name=%s", model_id, record.name)
            self._on_observed()


def _observed_status(record: ModelRecord, state: DeploymentState, *, done: bool) -> None:
    """The status that tells the truth about what serves, from what the deployer observed."""
    if done:
        status = ModelStatus.IDLE if record.replicas == 0 else ModelStatus.ACTIVE
        if record.status is not status:
            logger.info(
                "model %s model=%s name=%s generation=%d ready=%d",
                status.value.lower(), record.id, record.name, record.generation,
                state.ready_replicas,
            )  # fmt: skip
        record.status = status
        record.observed_generation = record.generation
        record.status_code, record.attempts, record.next_attempt_at = "", 0, 0.0
        record.status_msg = (
            "scaled to zero; the next request starts an instance" if record.replicas == 0 else ""
        )
        return
    record.status_code = state.reason
    record.status_msg = state.message
    if state.ready_replicas == 0 and record.status in (ModelStatus.ACTIVE, ModelStatus.IDLE):
        # Nothing serves (after a restart, or starting from zero): not ACTIVE until it does.
        record.status = ModelStatus.DEPLOYING


_OBSERVED = {
    "status",
    "status_code",
    "status_msg",
    "ready_instances",
    "endpoints",
    "observed_generation",
    "attempts",
    "next_attempt_at",
}
