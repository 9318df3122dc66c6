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

from api.records import Endpoint, ModelRecord, Pvc


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


class DeployerError(Exception):
    """A deployment step failed. ``reason`` becomes the model's ``status_code``."""

    def __init__(self, message: str, reason: str = "DeploymentError", retryable: bool = True):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retryable = retryable


class Deployer(Protocol):
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
