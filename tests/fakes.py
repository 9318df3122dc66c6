"""Hand-written fakes for the seams the API tests cross (no mocking library)."""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.deployment import DeployerError, DeploymentSpec, DeploymentState, Phase
from domain.records import Endpoint


@dataclass
class FakeDeployer:
    """A deployer whose instances are ready as soon as they are asked for."""

    instances_outlive_executor = True

    phase: Phase = Phase.READY
    reason: str = ""
    message: str = ""
    raise_error: DeployerError | None = None
    applied: list[DeploymentSpec] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)
    closed: bool = False

    async def apply(self, spec: DeploymentSpec) -> DeploymentState:
        self.applied.append(spec)
        if self.raise_error is not None:
            raise self.raise_error
        self.running[spec.model_id] = spec.replicas
        ready = spec.replicas if self.phase is Phase.READY else 0
        endpoints = tuple(
            Endpoint(instance_id=f"{spec.model_id}-{i}", url=f"http://127.0.0.1:{9000 + i}")
            for i in range(ready)
        )
        return DeploymentState(
            phase=self.phase,
            ready_replicas=ready,
            endpoints=endpoints,
            message=self.message,
            reason=self.reason,
        )

    async def remove(self, model_id: str) -> bool:
        self.removed.append(model_id)
        self.running.pop(model_id, None)
        return True

    async def recover(self) -> int:
        return 0

    async def close(self) -> None:
        self.closed = True
