"""Where models run. :mod:`domain.deployment` is the protocol; implementations beside it."""

from domain.deployment import Deployer, DeployerError, DeploymentSpec, DeploymentState, Phase

__all__ = ["Deployer", "DeployerError", "DeploymentSpec", "DeploymentState", "Phase"]
