"""Where models run. :mod:`api.deployers.base` is the protocol; implementations beside it."""

from api.deployers.base import Deployer, DeployerError, DeploymentSpec, DeploymentState, Phase

__all__ = ["Deployer", "DeployerError", "DeploymentSpec", "DeploymentState", "Phase"]
