"""``PulumiDeployer``: the Kubernetes runtime, one Pulumi stack per model (Automation API).

Each model is a stack named after its id in the project ``aif-models`` (the install program of
aif itself is the project ``aif``). The stack's config holds the model's desired spec and
cluster settings; its inline program (:func:`model_program`) builds the
:class:`~infra.model_deployment.ModelDeployment` from that config and exports the component's
outputs plus ``specHash``, a digest of the config and the rendered manifests. ``apply`` runs
``pulumi up`` only when the desired digest differs from the one the last successful update
exported, so neither a reconcile pass nor a restarted executor updates a stack needlessly.

The CLI is synchronous and slow, so every stack operation runs in a bounded thread pool
(``settings.pulumi_workers``), at most one per stack. ``apply`` and ``remove`` wait for it only
briefly (``apply_wait_s``, well under the reconciler's lease) and otherwise report progress
from the engine's events ("creating LeaderWorkerSet ..."); the next pass picks the result up.

Readiness is read from the cluster, not from Pulumi (the objects are not awaited). Left to
others: running the CLI on a stack, cancelling stale locks and reporting progress to
:mod:`infra.stacks`; reading the cluster and telling a phase from it to
:mod:`infra.cluster_observer`; rendering manifests to :mod:`infra.manifests`, applying them to
:mod:`infra.model_deployment`; retries and statuses to the model-job-executor.

Backend: ``settings.pulumi_backend_url`` (``s3://bucket?endpoint=...`` for OBS, credentials in
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_REGION`` of the executor's
environment) or ``file://<data_dir>/pulumi-state``; secrets use the passphrase provider with
``settings.pulumi_passphrase``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import pulumi
from pulumi import automation as auto

from domain.deployment import DeployerError, DeploymentSpec, DeploymentState, Phase
from domain.presets import load_presets
from domain.records import Pvc
from domain.settings import ClusterConfig, Settings
from infra import cluster_settings
from infra.cluster_observer import ClusterObserver, ClusterSnapshot, KubernetesObserver, diagnose
from infra.cluster_settings import Lookup
from infra.manifests import LWS_NAME_LABEL, SizingError, k8s_name, render_model
from infra.model_deployment import ModelDeployment, ModelDeploymentArgs
from infra.stacks import Progress, StackWorkspace, run_cli

logger = logging.getLogger(__name__)

PROJECT_NAME = "aif-models"
SPEC_HASH_KEY = "specHash"


# --- stack config and the inline program ------------------------------------------------------


def _spec_values(spec: DeploymentSpec) -> dict[str, str]:
    # The generation is left out: it changes nothing rendered, so it must not change the hash.
    return {
        "modelId": spec.model_id,
        "modelName": spec.name,
        "modelType": spec.type,
        "resourceType": spec.resource_type,
        "version": spec.version,
        "replicas": str(spec.replicas),
        "pvcName": spec.pvc.name,
        "pvcPath": spec.pvc.path,
    }


def stack_config(args: ModelDeploymentArgs) -> dict[str, str]:
    """The stack's config: the spec's fields and every cluster setting, as camelCase keys.

    The cluster settings are generated from ``ClusterConfig`` (:mod:`infra.cluster_settings`),
    so a new one reaches the stack, and its hash, with no change here.
    """
    spec = _spec_values(args.spec)
    cluster = cluster_settings.stack_values(args.cluster)
    clash = spec.keys() & cluster.keys()
    if clash:
        raise ValueError(f"cluster settings {sorted(clash)} clash with the spec's stack keys")
    return {**spec, **cluster}


def args_from_config(values: Lookup) -> ModelDeploymentArgs:
    """The inverse of :func:`stack_config` (the generation is not kept: it reads as 0)."""

    def required(key: str) -> str:
        value = values.get(key)
        if value is None:
            raise ValueError(f"stack config {key!r} is missing")
        return value

    spec = DeploymentSpec(
        model_id=required("modelId"),
        name=required("modelName"),
        type=required("modelType"),
        resource_type=required("resourceType"),
        version=values.get("version") or "",
        replicas=int(required("replicas")),
        pvc=Pvc(name=required("pvcName"), path=required("pvcPath")),
        generation=0,
    )
    return ModelDeploymentArgs(spec, cluster_settings.from_stack_values(values))


def model_program() -> None:
    """The inline program of every model stack: a ModelDeployment from the stack's config."""
    config = pulumi.Config()
    args = args_from_config(config)
    deployment = ModelDeployment(k8s_name(args.spec.name, args.spec.model_id), args)
    pulumi.export("lwsName", deployment.lws_name)
    pulumi.export("serviceName", deployment.service_name)
    pulumi.export("clusterIp", deployment.cluster_ip)
    pulumi.export("port", deployment.port)
    pulumi.export(SPEC_HASH_KEY, config.require(SPEC_HASH_KEY))


@dataclass(frozen=True)
class DesiredStack:
    config: dict[str, str]
    spec_hash: str


def desired_stack(spec: DeploymentSpec, cluster: ClusterConfig) -> DesiredStack:
    """The stack config for ``spec`` and its digest; refuses specs that cannot be rendered."""
    presets = load_presets()
    if spec.type not in presets:
        known = ", ".join(sorted(presets))
        raise DeployerError(
            f"no preset for model type {spec.type!r} (known: {known})",
            reason="UnknownModelType",
            retryable=False,
        )
    try:
        manifests = render_model(spec, presets[spec.type], cluster)
    except SizingError as exc:
        raise DeployerError(str(exc), reason="InvalidSpec", retryable=False) from exc
    base = stack_config(ModelDeploymentArgs(spec, cluster))
    # The rendered objects are in the digest, so an aif upgrade that changes them re-applies.
    text = json.dumps({"config": base, "manifests": manifests}, sort_keys=True)
    spec_hash = hashlib.sha256(text.encode()).hexdigest()[:16]
    return DesiredStack({**base, SPEC_HASH_KEY: spec_hash}, spec_hash)


# --- the deployer -------------------------------------------------------------------------------


@dataclass
class _Operation:
    kind: Literal["up", "destroy"]
    future: asyncio.Future[str]
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
    ) -> None:
        self._cluster = settings.cluster
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
        )
        self._observer: ClusterObserver = observer or KubernetesObserver()
        self._apply_wait_s = settings.pulumi_apply_wait_s if apply_wait_s is None else apply_wait_s
        self._pool = ThreadPoolExecutor(settings.pulumi_workers, thread_name_prefix="pulumi")
        self._locks: dict[str, asyncio.Lock] = {}
        self._operations: dict[str, _Operation] = {}
        # Digest of the last successful update per model; a restart reads it from the stack.
        self._applied: dict[str, str] = {}
        # Models whose objects vanished from the cluster: the next update refreshes first.
        self._drifted: set[str] = set()

    # The Deployer protocol.

    async def apply(self, spec: DeploymentSpec) -> DeploymentState:
        desired = desired_stack(spec, self._cluster)
        model_id = spec.model_id
        async with self._lock(model_id):
            op = self._operations.get(model_id)
            if op is None and (
                self._applied.get(model_id) != desired.spec_hash or model_id in self._drifted
            ):
                known = self._applied.get(model_id)
                refresh = model_id in self._drifted
                op = self._start(
                    model_id,
                    "up",
                    lambda progress: self._up(spec, desired, known, refresh, progress),
                )
            if op is not None:
                if not await self._settle(op):
                    return DeploymentState(Phase.PROGRESSING, message=op.progress.message)
                del self._operations[model_id]
                if op.kind == "destroy":
                    op.future.exception()  # a teardown that raced this apply: start afresh
                    return DeploymentState(Phase.PROGRESSING, message="a teardown just finished")
                self._applied[model_id] = op.future.result()
                self._drifted.discard(model_id)
            snapshot = await asyncio.to_thread(self._snapshot, spec)
            if snapshot.lws is None and op is None:
                # Applied, yet gone from the cluster (deleted by hand): re-apply with a refresh.
                logger.warning("drift model=%s: LeaderWorkerSet missing, re-applying", model_id)
                self._drifted.add(model_id)
            return diagnose(spec, self._cluster.namespace, snapshot)

    async def remove(self, model_id: str) -> bool:
        async with self._lock(model_id):
            op = self._operations.get(model_id)
            if op is not None and op.kind == "up":
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
            self._applied.pop(model_id, None)
            self._drifted.discard(model_id)
            return True

    async def recover(self) -> int:
        """Nothing to sweep at start-up: what a crashed executor left is repaired lazily.

        An update it interrupted never exported its digest, so the next ``apply`` runs it
        again; the lock it left is cancelled when that update meets it (its owner is dead).
        """
        return 0

    async def close(self) -> None:
        pending = [op.future for op in self._operations.values()]
        # A CLI run cannot be stopped safely (it would leave the stack locked): let it end.
        await asyncio.gather(*pending, return_exceptions=True)
        self._operations.clear()
        self._pool.shutdown(wait=True)
        await asyncio.to_thread(self._observer.close)

    # Operations: at most one per stack, in the pool, outliving the call that started them.

    def _lock(self, model_id: str) -> asyncio.Lock:
        return self._locks.setdefault(model_id, asyncio.Lock())

    def _start(
        self,
        model_id: str,
        kind: Literal["up", "destroy"],
        work: Callable[[Progress], str],
    ) -> _Operation:
        progress = Progress(f"pulumi {kind}")
        future = asyncio.get_running_loop().run_in_executor(self._pool, work, progress)
        op = _Operation(kind, future, progress)
        self._operations[model_id] = op
        return op

    async def _settle(self, op: _Operation) -> bool:
        done, _ = await asyncio.wait({op.future}, timeout=self._apply_wait_s)
        return bool(done)

    def _snapshot(self, spec: DeploymentSpec) -> ClusterSnapshot:
        """What the cluster shows of the model; only the LWS while every instance is ready."""
        namespace = self._cluster.namespace
        lws_name = k8s_name(spec.name, spec.model_id)
        try:
            lws = self._observer.leader_worker_set(namespace, lws_name)
            if lws is not None and lws.ready_replicas >= spec.replicas:
                return ClusterSnapshot(lws)
            pods = self._observer.pods(namespace, {LWS_NAME_LABEL: lws_name})
            pending = [pod.name for pod in pods if pod.phase == "Pending"]
            # Scheduling failures are told by events: listed only when a pod waits for a node.
            events = self._observer.warning_events(namespace, pending) if pending else []
            pvc_exists = self._observer.pvc_exists(namespace, spec.pvc.name)
        except Exception as exc:
            logger.warning("cannot read model=%s from the cluster: %s", spec.model_id, exc)
            raise DeployerError(
                f"cannot read the cluster: {exc}", reason="ClusterUnreachable"
            ) from exc
        return ClusterSnapshot(lws, tuple(pods), tuple(events), pvc_exists)

    # The CLI, in worker threads.

    def _up(
        self,
        spec: DeploymentSpec,
        desired: DesiredStack,
        known_hash: str | None,
        refresh: bool,
        progress: Progress,
    ) -> str:
        stack = self._stacks.stack(spec.model_id, create=True)
        if known_hash is None and not refresh:
            outputs = run_cli(lambda: stack.outputs(), "UpdateFailed")
            applied = outputs.get(SPEC_HASH_KEY)
            if applied is not None and applied.value == desired.spec_hash:
                logger.info("stack current model=%s hash=%s", spec.model_id, desired.spec_hash)
                return desired.spec_hash
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
        return desired.spec_hash

    def _destroy(self, model_id: str, progress: Progress) -> str:
        try:
            stack = self._stacks.stack(model_id, create=False)
        except auto.StackNotFoundError:
            logger.info("pulumi destroy model=%s: no stack, nothing to remove", model_id)
            self._stacks.remove_work_dir(model_id)
            return ""
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
        return ""


__all__ = [
    "PROJECT_NAME",
    "PulumiDeployer",
    "model_program",
]
