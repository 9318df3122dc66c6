"""The task-executor-manager: keeps each model's p95 latency under its SLO within its bounds.

- :mod:`scaler.metrics`: what is known of a model's load (``LoadSnapshot``) and where it comes
  from (``MetricsSource``): :mod:`scaler.prometheus_source` (PromQL), :mod:`scaler.gateway_source`
  (the gateway's own series, without a Prometheus).
- :mod:`scaler.discovery`: the targets Prometheus scrapes, as ``http_sd`` JSON.
- :mod:`scaler.policy`: the decision as a pure function of a context and a state.
- :mod:`scaler.task_executor_manager`: the role's loop, which fetches, decides and writes
  desired replicas to the store, where the model-job-executor picks them up.
"""

from scaler.discovery import http_sd_groups
from scaler.gateway_source import GatewaySource
from scaler.metrics import LoadSnapshot, MetricsSource
from scaler.policy import Decision, PolicyConfig, ScalingContext, ScalingState, decide
from scaler.prometheus_source import PrometheusSource
from scaler.task_executor_manager import TaskExecutorManager

__all__ = [
    "Decision",
    "GatewaySource",
    "LoadSnapshot",
    "MetricsSource",
    "PolicyConfig",
    "PrometheusSource",
    "ScalingContext",
    "ScalingState",
    "TaskExecutorManager",
    "decide",
    "http_sd_groups",
]
