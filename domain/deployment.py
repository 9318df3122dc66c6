"""The ``Deployer`` protocol: how the model-job-executor turns a desired spec into instances.

A deployer is driven level-triggered: :meth:`Deployer.apply` is called on every reconcile pass
with the whole desired spec, must be idempotent, must return quickly (long work continues in
the background or in the cluster) and reports what it observes now. :meth:`Deployer.remove`
tears everything down and says whether anything is left. Implementations:
:class:`api.deployers.local.LocalDeployer` (engine processes on this machine) and
:class:`infra.pulumi_deployer.PulumiDeployer` (one Pulumi stack per model on Kubernetes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from domain.errors import DeployerError
from domain.records import Endpoint, ModelRecord, Pvc

__all__ = ["Deployer", "DeployerError", "DeploymentSpec", "DeploymentState", "Phase"]


@dataclass(frozen=True)
class DeploymentSpec:
    model_id: str
    name: str
    type: str
    resource_type: str
    version: str
    replicas: int
    pvc: Pvc
    generation: int

    @classmethod
    def from_record(cls, record: ModelRecord) -> DeploymentSpec:
        return cls(
            model_id=record.id,
            name=record.name,
            type=record.type,
            resource_type=record.resource_type,
            version=record.version,
            replicas=record.replicas,
            pvc=record.pvc,
            generation=record.generation,
        )


class Phase(enum.StrEnum):
    PROGRESSING = "PROGRESSING"
    READY = "READY"
    FAILED = "FAILED"
    ABSENT = "ABSENT"


@dataclass(frozen=True)
class DeploymentState:
    phase: Phase
    ready_replicas: int = 0
    endpoints: tuple[Endpoint, ...] = field(default_factory=tuple)
    message: str = ""
    # A short code for ``status_code``: ``PvcNotFound``, ``InsufficientAccelerators``, ...
    reason: str = ""


class Deployer(Protocol):
    """Where a model's instances run; driven by the model-job-executor, one model at a time.

    Every method may be called again after a crash of the caller: ``apply`` with the same spec
    changes nothing that already matches, and ``remove`` of a model with nothing left is a
    success. Failures are raised as :class:`~domain.errors.DeployerError`, whose ``reason``
    becomes the model's ``status_code`` and ``retryable`` says whether a later pass may help.
    """

    # False when instances die with the process that drives them (local engines): their
    # recorded endpoints are stale once that process restarts.
    instances_outlive_executor: bool

    async def apply(self, spec: DeploymentSpec) -> DeploymentState:
        """Drive the model's deployment toward ``spec``; idempotent, returns promptly."""
        ...

    async def remove(self, model_id: str) -> bool:
        """Tear down everything of the model; True when nothing of it is left."""
        ...

    async def recover(self) -> int:
        """At start-up: clean up what an earlier, crashed process left; returns how many."""
        ...

    async def close(self) -> None:
        """Release what the deployer holds (local engines are stopped)."""
        ...
