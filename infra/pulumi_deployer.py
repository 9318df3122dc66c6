"""``PulumiDeployer``: the Kubernetes runtime, one Pulumi stack per model (Automation API).

Each model is a stack named after its id in the project ``aif-models`` (:mod:`infra.model_stack`:
its config, inline program and ``specHash``, a digest of everything but the replicas).
``apply`` runs a full ``pulumi up`` only when the desired digest differs from the one the last
successful update exported (or the cluster drifted); when only the replicas differ it *scales*:
it sets the stack's ``replicas`` and runs ``pulumi up``, with no config rewrite and no refresh.
Neither a reconcile pass nor a restarted executor updates a stack needlessly.

The CLI is synchronous and slow, so every stack operation runs in a bounded thread pool
(``settings.pulumi_workers``), at most one per stack. ``apply`` and ``remove`` wait for it only
briefly (``apply_wait_s``) and otherwise report progress from the engine's events; the next
pass picks the result up. A stack locked by a live holder is not a failure: the model stays
progressing, says who holds the lock, and the update is tried again after
:data:`LOCK_RETRY_S`. ``remove`` is done only when the model's pods are gone too (the objects
are not awaited, so a destroy returns while pods still hold their cards).

Readiness is read from the cluster, not from Pulumi, and only as often as
:mod:`infra.model_watch` allows; an edit of the LeaderWorkerSet by anyone else (its generation
moved, or its replicas differ) is drift, repaired by ``pulumi up --refresh`` that wins over
the other field manager (the objects carry ``pulumi.com/patchForce``). Left to others: the CLI
and locks to :mod:`infra.stacks`; reading the cluster to :mod:`infra.cluster_observer`;
phases and messages to :mod:`infra.diagnosis`; retries and statuses to the model-job-executor.

Fault isolation. With a :class:`~infra.node_quarantine.FaultIsolation` (the inventory), every
desired stack keeps the model off the quarantined nodes of its resource type (node affinity;
a change of that set changes the digest, so the affinity is re-applied), each observation
reports a pod that terminated with a device error (its termination message) or a crash loop
confined to one node while the model serves elsewhere, and a group still on a quarantined node
once the affinity is applied has its pods deleted: LWS makes the group again, elsewhere.

Backend: ``settings.pulumi_backend_url`` (``s3://bucket?endpoint=...`` for OBS, credentials in
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_REGION`` of the executor's
environment) or ``file://<data_dir>/pulumi-state``; secrets use the passphrase provider with
``settings.pulumi_passphrase``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from pulumi import automation as auto

from domain.deployment import DeployerError, DeploymentSpec, DeploymentState, Phase
from domain.device_faults import find_device_fault
from domain.settings import Settings
from infra.cluster_observer import ClusterObserver, ClusterSnapshot, KubernetesObserver
from infra.diagnosis import CrashLoop, diagnose
from infra.manifests import k8s_name, label_value
from infra.model_stack import (
    PROJECT_NAME,
    REPLICAS_KEY,
    SPEC_HASH_KEY,
    DesiredStack,
    desired_stack,
    model_program,
)
from infra.model_watch import MIN_INTERVAL_S, ModelWatch, read_snapshot
from infra.node_quarantine import FaultIsolation
from infra.stacks import Progress, StackWorkspace, run_cli

logger = logging.getLogger(__name__)

# A stack locked by a live update: how long to wait before trying it again.
LOCK_RETRY_S = 15.0
# The label every pod of a model carries (the product's template's), for the pods-gone check.
MODEL_POD_LABEL = "xds/modelId"


@dataclass(frozen=True)
class Applied:
    spec_hash: str
    replicas: int


@dataclass
class _Operation:
    kind: Literal["up", "scale", "destroy"]
    future: asyncio.Future[Applied]
    progress: Progress


class PulumiDeployer:
    """:class:`~domain.deployment.Deployer` for ``runtime = "kubernetes"``."""

    # Pods run on whatever happens to the executor's own pod.
    instances_outlive_executor = True

    def __init__(
        self,
        settings: Settings,
        *,
        pulumi_command: auto.PulumiCommand | None = None,
        observer: ClusterObserver | None = None,
        apply_wait_s: float | None = None,
        stale_lock_age_s: float | None = None,
        clock: Callable[[], float] = time.time,
        isolation: FaultIsolation | None = None,
    ) -> None:
        self._cluster = settings.cluster
        self._isolation = isolation
        # The quarantined nodes last read, per resource type: kept when a read fails.
        self._avoid: dict[str, frozenset[str]] = {}
        self._observer: ClusterObserver = observer or KubernetesObserver()
        state_dir = (settings.data_dir / "pulumi-state").resolve()
        self._stacks = StackWorkspace(
            PROJECT_NAME,
            model_program,
            # Absolute: the CLI runs in each stack's work dir, and file:// URLs need one.
            work_root=(settings.pulumi_work_dir or settings.data_dir / "pulumi").resolve(),
            state_dir=state_dir,
            backend_url=settings.pulumi_backend_url or state_dir.as_uri(),
            passphrase=settings.pulumi_passphrase,
            pulumi_command=pulumi_command,
            stale_lock_age_s=(
                settings.pulumi_stale_lock_s if stale_lock_age_s is None else stale_lock_age_s
            ),
            clock=clock,
            peer_alive=self._observer.peer_exists,
        )
        self._clock = clock
        self._apply_wait_s = settings.pulumi_apply_wait_s if apply_wait_s is None else apply_wait_s
        self._pool = ThreadPoolExecutor(settings.pulumi_workers, thread_name_prefix="pulumi")
        self._locks: dict[str, asyncio.Lock] = {}
        self._operations: dict[str, _Operation] = {}
        # What the last successful update applied, per model; a restart reads it from the stack.
        self._applied: dict[str, Applied] = {}
        # Models whose objects were changed or deleted by someone else: the next update refreshes.
        self._drifted: set[str] = set()
        self._watches: dict[str, ModelWatch] = {}
        # Models whose stack is locked by a live holder: (retry at, message).
        self._locked: dict[str, tuple[float, str]] = {}
        # Models destroyed whose pods may still run: when their pods were last looked at.
        self._destroyed: dict[str, float] = {}

    # The Deployer protocol.

    async def apply(self, spec: DeploymentSpec) -> DeploymentState:
        avoid = await self._avoided(spec.resource_type)
        desired = desired_stack(spec, self._cluster, avoid)
        model_id = spec.model_id
        async with self._lock(model_id):
            op = self._operations.get(model_id) or self._maybe_update(spec, desired)
            if op is not None:
                if not await self._settle(op):
                    return self._meanwhile(model_id, op.progress.message)
                del self._operations[model_id]
                if op.kind == "destroy":
                    op.future.exception()  # a teardown that raced this apply: start afresh
                    return DeploymentState(Phase.PROGRESSING, message="a teardown just finished")
                try:
                    self._applied[model_id] = op.future.result()
                except DeployerError as exc:
                    if exc.reason != "StackLocked":
                        raise
                    self._locked[model_id] = (self._clock() + LOCK_RETRY_S, exc.message)
                    return self._meanwhile(model_id, exc.message)
                self._drifted.discard(model_id)
                self._locked.pop(model_id, None)
                self._watch(model_id, desired, spec).after_update()
            locked = self._locked.get(model_id)
            if locked is not None:
                return self._meanwhile(model_id, locked[1])
            return await self._observe(spec, desired, avoid)

    async def remove(self, model_id: str) -> bool:
        async with self._lock(model_id):
            if model_id not in self._destroyed:
                if not await self._destroy_stack(model_id):
                    return False
                self._destroyed[model_id] = -float("inf")
            return await self._pods_gone(model_id)

    async def recover(self) -> int:
        """Nothing to sweep at start-up: what a crashed executor left is repaired lazily.

        An update it interrupted never exported its digest, so the next ``apply`` runs it
        again; the lock it left is cancelled when that update meets it (its holder is gone).
        """
        return 0

    async def close(self) -> None:
        pending = [op.future for op in self._operations.values()]
        # A CLI run cannot be stopped safely (it would leave the stack locked): let it end.
        await asyncio.gather(*pending, return_exceptions=True)
        self._operations.clear()
        self._pool.shutdown(wait=True)
        await asyncio.to_thread(self._observer.close)

    # Deciding what to run.

    def _maybe_update(self, spec: DeploymentSpec, desired: DesiredStack) -> _Operation | None:
        model_id = spec.model_id
        locked = self._locked.get(model_id)
        if locked is not None and self._clock() < locked[0]:
            return None
        applied = self._applied.get(model_id)
        refresh = model_id in self._drifted
        if refresh or applied is None or applied.spec_hash != desired.spec_hash:
            known = None if applied is None else applied.spec_hash
            return self._start(model_id, "up", lambda p: self._up(spec, desired, known, refresh, p))
        if applied.replicas != spec.replicas:
            return self._start(model_id, "scale", lambda p: self._scale(spec, desired, p))
        self._locked.pop(model_id, None)
        return None

    def _watch(self, model_id: str, desired: DesiredStack, spec: DeploymentSpec) -> ModelWatch:
        key = (desired.spec_hash, spec.replicas)
        now = self._clock()
        watch = self._watches.get(model_id)
        if watch is None:
            watch = self._watches[model_id] = ModelWatch(key, now)
        elif watch.key != key:
            watch.restart(key, now)
        return watch

    def _meanwhile(self, model_id: str, message: str) -> DeploymentState:
        """Progress while the stack is busy, keeping the instances that serve meanwhile."""
        watch = self._watches.get(model_id)
        last = watch.state if watch is not None else None
        if last is None:
            return DeploymentState(Phase.PROGRESSING, message=message)
        return DeploymentState(Phase.PROGRESSING, last.ready_replicas, last.endpoints, message)

    async def _avoided(self, resource_type: str) -> frozenset[str]:
        if self._isolation is None:
            return frozenset()
        try:
            found = await asyncio.to_thread(self._isolation.avoided_nodes, resource_type)
        except Exception as exc:
            logger.warning("cannot read the quarantined nodes, keeping the last ones: %s", exc)
            return self._avoid.get(resource_type, frozenset())
        self._avoid[resource_type] = found
        return found

    async def _observe(
        self, spec: DeploymentSpec, desired: DesiredStack, avoid: frozenset[str]
    ) -> DeploymentState:
        watch = self._watch(spec.model_id, desired, spec)
        now = self._clock()
        if watch.state is not None and not watch.due(now):
            return watch.state
        lws_name = k8s_name(spec.name, spec.model_id)
        namespace = self._cluster.namespace
        try:
            snapshot = await asyncio.to_thread(
                read_snapshot, self._observer, namespace, lws_name, spec.pvc.name, watch.pvc_seen
            )
        except Exception as exc:
            logger.warning("cannot read model=%s from the cluster: %s", spec.model_id, exc)
            raise DeployerError(
                f"cannot read the cluster: {exc}", reason="ClusterUnreachable"
            ) from exc
        crash = watch.history.observe(snapshot.pods)
        applied = self._applied.get(spec.model_id)
        if self._isolation is not None:
            # Groups move only once the LWS carries the affinity that keeps them off.
            placed = applied is not None and applied.spec_hash == desired.spec_hash
            crash = await self._isolate(spec, snapshot, crash, watch, avoid if placed else None)
        drift = watch.drifted(snapshot.lws, applied.replicas) if applied is not None else ""
        if drift:
            logger.warning("drift model=%s: %s; re-applying", spec.model_id, drift)
            self._drifted.add(spec.model_id)
        state = diagnose(spec, namespace, snapshot, crash)
        if crash is not None:
            watch.history.forgive()
        watch.record(state, snapshot, now)
        if drift and state.phase is not Phase.FAILED:
            message = f"re-applying: {drift}"
            ready, serving = state.ready_replicas, state.endpoints
            state = DeploymentState(Phase.PROGRESSING, ready, serving, message)
            watch.due_at = -float("inf")
        return state

    async def _isolate(
        self,
        spec: DeploymentSpec,
        snapshot: ClusterSnapshot,
        crash: CrashLoop | None,
        watch: ModelWatch,
        avoid: frozenset[str] | None,
    ) -> CrashLoop | None:
        """Report device faults and a crash loop confined to one node, and move groups off
        the ``avoid`` nodes (None: not yet); the crash loop left for the diagnosis (None once
        blamed on a node)."""
        model = (spec.model_id, spec.name)
        uids = {p.uid for p in snapshot.pods}
        watch.faults_seen = {seen for seen in watch.faults_seen if seen[0] in uids}
        for pod in snapshot.pods:
            fault = find_device_fault(pod.termination_message) if pod.node else None
            if fault is None or (pod.uid, pod.termination_message) in watch.faults_seen:
                continue
            if await self._report(pod.node, fault.device, fault.line, model):
                watch.faults_seen.add((pod.uid, pod.termination_message))
        if crash is not None and crash.node:
            elsewhere = [p for p in snapshot.pods if p.ready and p.node and p.node != crash.node]
            if elsewhere:
                last = f"; last exit: {crash.last_termination}" if crash.last_termination else ""
                reason = (
                    f"the group of pod {crash.pod} was recreated {crash.recreations} times on "
                    f"this node before it became ready, while the model serves on others{last}"
                )
                if await self._report(crash.node, None, reason, model):
                    watch.history.forgive()
                    crash = None
        if avoid:
            await self._move_off(spec, snapshot, avoid)
        return crash

    async def _report(
        self, node: str, device: int | None, reason: str, model: tuple[str, str]
    ) -> bool:
        """Tell the inventory of a fault; whether it took it (the next read tries again)."""
        assert self._isolation is not None
        try:
            await asyncio.to_thread(self._isolation.device_fault, node, device, reason, model)
        except Exception as exc:
            logger.warning("cannot quarantine a card of node=%s (%s): %s", node, reason, exc)
            return False
        return True

    async def _move_off(
        self, spec: DeploymentSpec, snapshot: ClusterSnapshot, avoid: frozenset[str]
    ) -> None:
        """Delete the pods of every group with a pod on a quarantined node: the applied
        affinity keeps the group LWS makes again off it."""
        groups = {_group(p.name, p.leader) for p in snapshot.pods
                  if p.node in avoid and not p.terminating}  # fmt: skip
        doomed = [p.name for p in snapshot.pods
                  if _group(p.name, p.leader) in groups and not p.terminating]  # fmt: skip
        if not doomed:
            return
        logger.warning("moving model=%s groups=%s off quarantined nodes=%s",
                       spec.model_id, sorted(groups), sorted(avoid))  # fmt: skip
        try:
            await asyncio.to_thread(self._observer.delete_pods, self._cluster.namespace, doomed)
        except Exception as exc:
            logger.warning("cannot delete pods of model=%s: %s", spec.model_id, exc)

    # Operations: at most one per stack, in the pool, outliving the call that started them.

    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._locks.setdefault(model_id, asyncio.Lock())

    def _start(
        self,
        model_id: str,
        kind: Literal["up", "scale", "destroy"],
        work: Callable[[Progress], Applied],
    ) -> _Operation:
        progress = Progress("pulumi up" if kind == "scale" else f"pulumi {kind}")
        future = asyncio.get_running_loop().run_in_executor(self._pool, work, progress)
        op = _Operation(kind, future, progress)
        self._operations[model_id] = op
        return op

    async def _settle(self, op: _Operation) -> bool:
        done, _ = await asyncio.wait({op.future}, timeout=self._apply_wait_s)
        return bool(done)

    async def _destroy_stack(self, model_id: str) -> bool:
        """Run (or collect) the model's destroy; True once it has succeeded."""
        op = self._operations.get(model_id)
        if op is not None and op.kind != "destroy":
            if not await self._settle(op):
                return False
            del self._operations[model_id]
            op.future.exception()  # its outcome no longer matters: the model goes
            op = None
        if op is None:
            op = self._start(model_id, "destroy", lambda p: self._destroy(model_id, p))
        if not await self._settle(op):
            return False
        del self._operations[model_id]
        op.future.result()
        for state in (self._applied, self._watches, self._locked):
            state.pop(model_id, None)
        self._drifted.discard(model_id)
        return True

    async def _pods_gone(self, model_id: str) -> bool:
        """Whether the destroyed model's pods have terminated (read at most every few s)."""
        now = self._clock()
        if now - self._destroyed[model_id] < MIN_INTERVAL_S:
            return False
        self._destroyed[model_id] = now
        labels = {MODEL_POD_LABEL: label_value(model_id)}
        try:
            pods = await asyncio.to_thread(self._observer.pods, self._cluster.namespace, labels)
        except Exception as exc:
            raise DeployerError(
                f"cannot read the cluster: {exc}", reason="ClusterUnreachable"
            ) from exc
        if pods:
            logger.info("model=%s destroyed; %d pods still terminating", model_id, len(pods))
            return False
        del self._destroyed[model_id]
        return True

    # The CLI, in worker threads.

    def _up(
        self,
        spec: DeploymentSpec,
        desired: DesiredStack,
        known_hash: str | None,
        refresh: bool,
        progress: Progress,
    ) -> Applied:
        stack = self._stacks.stack(spec.model_id, create=True)
        if known_hash is None and not refresh:
            outputs = run_cli(lambda: stack.outputs(), "UpdateFailed")
            applied = outputs.get(SPEC_HASH_KEY)
            replicas = outputs.get(REPLICAS_KEY)
            if applied is not None and applied.value == desired.spec_hash:
                if replicas is not None and int(replicas.value) == spec.replicas:
                    logger.info("stack current model=%s hash=%s", spec.model_id, applied.value)
                    return Applied(desired.spec_hash, spec.replicas)
                return self._scale(spec, desired, progress, stack)
            known_hash = str(applied.value) if applied is not None else None
        logger.info(
            "pulumi up model=%s name=%s type=%s resource_type=%s replicas=%d pvc=%s/%s "
            "hash=%s previous=%s refresh=%s",
            spec.model_id, spec.name, spec.type, spec.resource_type, spec.replicas,
            spec.pvc.name, spec.pvc.path, desired.spec_hash, known_hash, refresh,
        )  # fmt: skip
        config = {key: auto.ConfigValue(value) for key, value in desired.config.items()}
        run_cli(lambda: stack.set_all_config(config), "UpdateFailed")
        progress.message = "pulumi up: running the program"
        self._run_up(stack, progress, refresh)
        return Applied(desired.spec_hash, spec.replicas)

    def _scale(
        self,
        spec: DeploymentSpec,
        desired: DesiredStack,
        progress: Progress,
        stack: auto.Stack | None = None,
    ) -> Applied:
        """Only the replicas changed: set that one key and update, as a scale."""
        stack = stack or self._stacks.stack(spec.model_id, create=True)
        logger.info("pulumi up (scale) model=%s replicas=%d", spec.model_id, spec.replicas)
        value = auto.ConfigValue(str(spec.replicas))
        run_cli(lambda: stack.set_config(REPLICAS_KEY, value), "UpdateFailed")
        progress.message = f"pulumi up: scaling to {spec.replicas} instances"
        self._run_up(stack, progress, refresh=False)
        return Applied(desired.spec_hash, spec.replicas)

    def _run_up(self, stack: auto.Stack, progress: Progress, refresh: bool) -> None:
        self._stacks.unlocked(
            stack,
            lambda: stack.up(
                on_event=progress.on_event,
                on_output=progress.on_output,
                refresh=refresh or None,
                color="never",
            ),
            "UpdateFailed",
        )

    def _destroy(self, model_id: str, progress: Progress) -> Applied:
        gone = Applied("", 0)
        try:
            stack = self._stacks.stack(model_id, create=False)
        except auto.StackNotFoundError:
            logger.info("pulumi destroy model=%s: no stack, nothing to remove", model_id)
            self._stacks.remove_work_dir(model_id)
            return gone
        logger.info("pulumi destroy model=%s", model_id)
        self._stacks.unlocked(
            stack,
            lambda: stack.destroy(
                on_event=progress.on_event, on_output=progress.on_output, color="never"
            ),
            "DestroyFailed",
        )
        progress.message = "pulumi stack rm: removing the stack"
        self._stacks.unlocked(
            stack, lambda: stack.workspace.remove_stack(model_id), "DestroyFailed"
        )
        self._stacks.remove_work_dir(model_id)
        return gone


def _group(pod_name: str, leader: bool) -> str:
    """The group a pod belongs to, by its leader's name (LWS names workers ``<leader>-<i>``)."""
    return pod_name if leader else pod_name.rsplit("-", 1)[0]


__all__ = [
    "LOCK_RETRY_S",
    "PROJECT_NAME",
    "PulumiDeployer",
    "desired_stack",
    "model_program",
]
