"""The vLLM-compatible engine simulator: an OpenAI-style HTTP server without a model.

aif starts one simulator process per local model instance (``python -m simulator``, see
:mod:`simulator.__main__`). It is a program of its own: it imports the model presets from
:mod:`domain` and nothing of the API. It answers vLLM's routes with generated words, timed
by a continuous-batching scheduler driven by the model preset's latency profile, exposes
vLLM's Prometheus metrics, and injects failures on request.

Modules: :mod:`.config` (limits, latency profile, faults), :mod:`.sequence` and
:mod:`.kv_cache` (the scheduler's state), :mod:`.scheduler` (steps and their cost),
:mod:`.engine` (the async step loop), :mod:`.metrics`, :mod:`.text` (prompt sizes and words),
:mod:`.protocol` (the wire format), :mod:`.errors`, :mod:`.completions` (serving one request)
and :mod:`.server` (the Starlette app).
"""

from __future__ import annotations

from simulator.config import DEFAULT_MAX_TOKENS, EngineConfig, Faults
from simulator.engine import Engine, Generation, GenerationRequest, StepRecorder
from simulator.metrics import EngineMetrics
from simulator.scheduler import Scheduler, StepOutcome, StepPlan, step_cost_s
from simulator.sequence import FinishedSequence, Sequence, TokenEvent
from simulator.server import SimulatorServer, build_app

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "Engine",
    "EngineConfig",
    "EngineMetrics",
    "Faults",
    "FinishedSequence",
    "Generation",
    "GenerationRequest",
    "Scheduler",
    "Sequence",
    "SimulatorServer",
    "StepOutcome",
    "StepPlan",
    "StepRecorder",
    "TokenEvent",
    "build_app",
    "step_cost_s",
]
