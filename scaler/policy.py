"""The scaling decision, as small pure functions in stages.

``decide(context, state)`` → ``(Decision, new state)``: first the load ratio (how far the
worse of p95 TTFT and p95 TPOT is from its target), then the replicas that ratio asks for,
then the bounds, then the delays (a recommendation must hold for a while before it acts, and
scaling down waits longer than scaling up). No I/O and no clock: ``now`` is in the context,
so tests step it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from domain.records import within_bounds
from scaler.metrics import LatencySnapshot


@dataclass(frozen=True)
class PolicyConfig:
    # Within 10% over target is noise, not a reason to add an instance.
    upscale_tolerance: float = 0.1
    # Remove an instance only when latency is well under target, so the next one isn't tight.
    downscale_ratio: float = 0.5
    # A breach must last this long before instances are added (a burst is not a trend).
    upscale_delay_s: float = 10.0
    # Capacity is given back slowly: instances take minutes to load on a cluster.
    downscale_delay_s: float = 120.0


@dataclass(frozen=True)
class ScalingContext:
    now: float
    replicas: int
    min_instance: int
    max_instance: int
    ttft_target_ms: float
    tpot_target_ms: float
    snapshot: LatencySnapshot | None


@dataclass(frozen=True)
class ScalingState:
    """When the current recommendation first appeared (0 when there is none)."""

    proposed_replicas: int = 0
    proposed_since: float = 0.0


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    ratio: float | None


def load_ratio(ctx: ScalingContext) -> float | None:
    """The worse of p95/target over TTFT and TPOT; None when there is no traffic to judge."""
    snap = ctx.snapshot
    if snap is None:
        return None
    ratios = []
    if snap.ttft_p95_ms is not None:
        ratios.append(snap.ttft_p95_ms / ctx.ttft_target_ms)
    if snap.tpot_p95_ms is not None:
        ratios.append(snap.tpot_p95_ms / ctx.tpot_target_ms)
    return max(ratios) if ratios else None


def recommended(ctx: ScalingContext, ratio: float | None, config: PolicyConfig) -> int:
    if ratio is None:
        return ctx.replicas
    waiting = ctx.snapshot.waiting if ctx.snapshot is not None else 0
    if ratio > 1 + config.upscale_tolerance:
        return max(ctx.replicas + 1, math.ceil(ctx.replicas * ratio))
    if ratio < config.downscale_ratio and waiting == 0:
        return ctx.replicas - 1
    return ctx.replicas


def decide(
    ctx: ScalingContext, state: ScalingState, config: PolicyConfig | None = None
) -> tuple[Decision, ScalingState]:
    config = config or PolicyConfig()
    ratio = load_ratio(ctx)
    target = within_bounds(recommended(ctx, ratio, config), ctx.min_instance, ctx.max_instance)
    if target == ctx.replicas:
        return Decision(ctx.replicas, "within target", ratio), ScalingState()
    if state.proposed_replicas == 0 or (target > ctx.replicas) != (
        state.proposed_replicas > ctx.replicas
    ):
        state = ScalingState(proposed_replicas=target, proposed_since=ctx.now)
    else:
        state = replace(state, proposed_replicas=target)
    delay_s = config.upscale_delay_s if target > ctx.replicas else config.downscale_delay_s
    if ctx.now - state.proposed_since < delay_s:
        waited = ctx.now - state.proposed_since
        return Decision(
            ctx.replicas, f"waiting {waited:.0f}/{delay_s:.0f}s to scale to {target}", ratio
        ), state
    direction = "up" if target > ctx.replicas else "down"
    return Decision(target, f"scale {direction}", ratio), ScalingState()
