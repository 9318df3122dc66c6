"""The scaling decision, as small pure functions in stages.

``decide(context, state)`` → ``(Decision, new state)``. No I/O and no clock: ``now`` is in the
context, so tests step it. The stages:

1. **Signals** (:func:`measure`). The SLO ratio is the worse of p95 TTFT / target and p95 TPOT /
   target (None without latency data). Saturation is what the gateway holds, in flight and
   queued, over what the ready instances serve at once. Queued requests at the gateway and
   the engines' own queue are leading signals: they come before latency grows.
2. **Learning** (:func:`learn`). The capacity estimate is the request rate one instance
   sustains while meeting the SLO: raised (an EWMA toward the observed per-instance rate)
   when the SLO is met under a substantial load, lowered below the rate at which it was
   breached. A light load meeting the SLO says nothing about capacity and leaves it alone.
3. **Recommendation** (:func:`recommend`), by stage:

   - *panic*: a burst (SLO ratio over ``panic_ratio``, more queued than the ready instances
     can absorb, or requests held with nothing ready). Up at once, by a bounded step.
   - *breach*: over target, or requests queue. Sized by the estimate,
     ``ceil(rate / (estimate * target_utilisation))`` (latency grows much faster than load
     under queueing, so replicas * latency ratio overshoots); without an estimate, one more.
     Acts once the breach has lasted ``upscale_delay_s``.
   - *steady*: the fewest instances the load needs (by the estimate and by concurrency),
     never more than now. Acts only as a scale-in through the stable window: the target is
     the highest recommendation over the last ``downscale_delay_s`` (Knative's stable
     window), so a short dip does not scale in. Low latency is not required: near idle,
     TTFT is bound by prompt length.
   - *idle*: nothing answered, in flight or queued for ``idle_window_s``: toward
     ``min_instance``, which may be 0.

4. **Steps and bounds**: at most ``max_step_up`` (and at most doubling) up, ``max_step_down``
   down per decision, sized from the *ready* instances so a pass does not pile up instances
   while earlier ones still start; then :func:`domain.records.within_bounds`.

Every :class:`Decision` carries ``inputs``, a flat dict of every figure that led to it, for one
structured log line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from domain.records import within_bounds
from scaler.metrics import LoadSnapshot

Inputs = Mapping[str, float | int | str | None]


@dataclass(frozen=True)
class PolicyConfig:
    # Within 10% over target is noise, not a reason to add an instance.
    upscale_tolerance: float = 0.1
    # A (non-panic) breach must last this long before instances are added.
    upscale_delay_s: float = 10.0
    # The stable window: scale in only to the highest recommendation seen over it.
    downscale_delay_s: float = 120.0
    # Over this SLO ratio it is a burst: scale up at once.
    panic_ratio: float = 2.0
    # Over this saturation (queued beyond what the ready instances absorb): a burst too.
    panic_saturation: float = 1.5
    # Instances added at most per decision (and never more than doubling).
    max_step_up: int = 4
    # Instances removed at most per decision.
    max_step_down: int = 1
    # Size for this fraction of the estimated capacity, leaving headroom.
    target_utilisation: float = 0.8
    # No traffic for this long: toward min_instance (possibly 0).
    idle_window_s: float = 300.0
    # Learn the capacity estimate only above this saturation ("a substantial load").
    learn_min_saturation: float = 0.1
    # EWMA weight of a new observation in the capacity estimate.
    estimate_alpha: float = 0.3
    # On a breach at per-instance rate r, the estimate is lowered toward r * this.
    breach_backoff: float = 0.9


@dataclass(frozen=True)
class ScalingContext:
    now: float
    # Desired instances now (the record's replicas).
    replicas: int
    # Instances ready and serving now.
    ready: int
    min_instance: int
    max_instance: int
    ttft_target_ms: float
    tpot_target_ms: float
    # Requests one instance serves at once (the gateway's admission capacity per instance).
    capacity_per_instance: int
    # The model's load; None when it could not be read (the policy holds).
    snapshot: LoadSnapshot | None


@dataclass(frozen=True)
class ScalingState:
    """What one model's decisions remember between passes."""

    # Requests per second one instance sustains within the SLO; None until learnt.
    capacity_estimate: float | None = None
    # When the current (non-panic) breach began.
    breach_since: float | None = None
    # When the current idle spell began.
    idle_since: float | None = None
    # When the current unbroken run of readable snapshots began.
    observed_since: float | None = None
    # (time, recommended replicas) over the stable window.
    recommendations: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    inputs: Inputs

    @property
    def ratio(self) -> float | None:
        ratio = self.inputs.get("slo_ratio")
        return float(ratio) if isinstance(ratio, int | float) else None


@dataclass(frozen=True)
class Signals:
    ratio: float | None
    saturation: float
    per_instance_rate: float
    idle: bool
    panic: bool
    breach: bool
    # Requests wait somewhere (the gateway's queue, the engines'): no scale-in.
    waiting: bool


def slo_ratio(snap: LoadSnapshot, ttft_target_ms: float, tpot_target_ms: float) -> float | None:
    """The worse of p95/target over TTFT and TPOT; None without latency data."""
    ratios = []
    if snap.ttft_p95_ms is not None:
        ratios.append(snap.ttft_p95_ms / ttft_target_ms)
    if snap.tpot_p95_ms is not None:
        ratios.append(snap.tpot_p95_ms / tpot_target_ms)
    return max(ratios) if ratios else None


def measure(ctx: ScalingContext, snap: LoadSnapshot, config: PolicyConfig) -> Signals:
    ratio = slo_ratio(snap, ctx.ttft_target_ms, ctx.tpot_target_ms)
    ready = max(ctx.ready, 1)
    saturation = (snap.in_flight + snap.queued) / (ready * max(ctx.capacity_per_instance, 1))
    engine_waiting = (snap.engine_waiting or 0.0) > 0
    waiting = snap.queued > 0 or engine_waiting
    idle = (
        snap.request_rate <= 0 and snap.in_flight <= 0 and not waiting and ratio is None
    )  # fmt: skip
    panic = (
        (ratio is not None and ratio > config.panic_ratio)
        or saturation > config.panic_saturation
        or (snap.queued > 0 and ctx.ready == 0)
    )
    breach = (ratio is not None and ratio > 1 + config.upscale_tolerance) or waiting
    return Signals(ratio, saturation, snap.request_rate / ready, idle, panic, breach, waiting)


def learn(
    estimate: float | None, ctx: ScalingContext, sig: Signals, config: PolicyConfig
) -> float | None:
    """The capacity estimate after this observation."""
    rate, alpha = sig.per_instance_rate, config.estimate_alpha
    if ctx.ready < 1 or rate <= 0 or sig.ratio is None:
        return estimate
    if sig.ratio <= 1 and sig.saturation >= config.learn_min_saturation:
        if estimate is None:
            return rate
        return estimate + alpha * (rate - estimate) if rate > estimate else estimate
    if sig.ratio > 1 + config.upscale_tolerance and estimate is not None:
        return min(estimate, (1 - alpha) * estimate + alpha * rate * config.breach_backoff)
    return estimate


def grow(ready: int, config: PolicyConfig) -> int:
    """The most instances one step up from ``ready`` reaches: at most doubling, +max_step_up."""
    return ready + max(1, min(ready, config.max_step_up))


def needed(
    ctx: ScalingContext, snap: LoadSnapshot, estimate: float | None, config: PolicyConfig
) -> int:
    """Instances the load needs at the target utilisation: by rate (with an estimate) and by
    concurrency; at least one while there is traffic."""
    util = config.target_utilisation
    by_concurrency = math.ceil(
        (snap.in_flight + snap.queued) / (max(ctx.capacity_per_instance, 1) * util)
    )
    by_rate = math.ceil(snap.request_rate / (estimate * util)) if estimate else 0
    return max(by_concurrency, by_rate, 1)


def recommend(
    ctx: ScalingContext,
    snap: LoadSnapshot,
    sig: Signals,
    estimate: float | None,
    config: PolicyConfig,
) -> tuple[str, int]:
    """(stage, replicas it asks for), before delays, windows and bounds."""
    if sig.idle:
        return "idle", ctx.min_instance
    ceiling = grow(ctx.ready, config)
    if sig.panic:
        return "panic", max(ctx.replicas, ceiling)
    if sig.breach:
        more = ctx.ready + 1
        if estimate is not None:
            more = max(more, min(needed(ctx, snap, estimate, config), ceiling))
        return "breach", max(ctx.replicas, more)
    if sig.ratio is not None and sig.ratio > 1:
        return "steady", ctx.replicas  # within tolerance over target: no scale-in either
    return "steady", min(ctx.replicas, needed(ctx, snap, estimate, config))


def _windowed(state: ScalingState, now: float, wanted: int, window_s: float) -> ScalingState:
    kept = tuple((t, n) for t, n in state.recommendations if t > now - window_s)
    return replace(state, recommendations=(*kept, (now, wanted)))


def _since(then: float | None, now: float) -> float | None:
    return None if then is None else now - then


def _keep(since: float | None, now: float) -> float:
    """When a spell began: ``since`` if it is running, else now."""
    return now if since is None else since


def _act(
    ctx: ScalingContext, stage: str, wanted: int, state: ScalingState, config: PolicyConfig
) -> tuple[int, str, ScalingState]:
    """Apply the delays, the stable window and the steps to the recommendation."""
    now, replicas = ctx.now, ctx.replicas
    if stage in ("panic", "breach") and wanted <= replicas:
        return replicas, f"{stage}: {replicas - ctx.ready} instances still starting", state
    if stage == "panic":
        return wanted, "panic: scale up at once", replace(state, breach_since=now)
    if stage == "breach":
        waited = now - _keep(state.breach_since, now)
        if waited < config.upscale_delay_s:
            return replicas, f"breach for {waited:.0f}/{config.upscale_delay_s:.0f}s", state
        return wanted, "breach: scale up", replace(state, breach_since=now)
    if stage == "idle":
        idle_for = now - _keep(state.idle_since, now)
        if idle_for < config.idle_window_s:
            return replicas, f"idle for {idle_for:.0f}/{config.idle_window_s:.0f}s", state
        target = max(wanted, replicas - config.max_step_down)
        return target, "idle: scale toward min_instance" if target < replicas else "idle", state
    stable_for = now - _keep(state.observed_since, now)
    window_max = max(n for _, n in state.recommendations)
    if window_max >= replicas:
        return replicas, "within target", state
    if stable_for < config.downscale_delay_s:
        return replicas, f"low for {stable_for:.0f}/{config.downscale_delay_s:.0f}s", state
    target = max(window_max, replicas - config.max_step_down)
    return target, "stable window: scale in", state


def decide(
    ctx: ScalingContext, state: ScalingState, config: PolicyConfig | None = None
) -> tuple[Decision, ScalingState]:
    config = config or PolicyConfig()
    snap = ctx.snapshot
    if snap is None:
        held = within_bounds(ctx.replicas, ctx.min_instance, ctx.max_instance)
        return Decision(held, "no metrics: hold", _inputs(ctx, None, state, "hold")), state
    sig = measure(ctx, snap, config)
    now = ctx.now
    state = replace(
        state,
        capacity_estimate=learn(state.capacity_estimate, ctx, sig, config),
        breach_since=_keep(state.breach_since, now) if sig.breach and not sig.panic else None,
        idle_since=_keep(state.idle_since, now) if sig.idle else None,
        observed_since=_keep(state.observed_since, now),
    )
    stage, wanted = recommend(ctx, snap, sig, state.capacity_estimate, config)
    state = _windowed(state, now, wanted, config.downscale_delay_s)
    target, reason, state = _act(ctx, stage, wanted, state, config)
    replicas = within_bounds(target, ctx.min_instance, ctx.max_instance)
    inputs = {**_inputs(ctx, sig, state, stage), "recommended": wanted}
    return Decision(replicas, reason, inputs), state


def _inputs(
    ctx: ScalingContext, sig: Signals | None, state: ScalingState, stage: str
) -> dict[str, float | int | str | None]:
    snap = ctx.snapshot or LoadSnapshot()
    window = [n for _, n in state.recommendations]
    return {
        "stage": stage,
        "slo_ratio": sig.ratio if sig else None,
        "ttft_p95_ms": snap.ttft_p95_ms,
        "tpot_p95_ms": snap.tpot_p95_ms,
        "ttft_target_ms": ctx.ttft_target_ms,
        "tpot_target_ms": ctx.tpot_target_ms,
        "request_rate": snap.request_rate,
        "in_flight": snap.in_flight,
        "queued": snap.queued,
        "engine_waiting": snap.engine_waiting,
        "kv_usage": snap.kv_usage,
        "saturation": sig.saturation if sig else None,
        "per_instance_rate": sig.per_instance_rate if sig else None,
        "capacity_estimate": state.capacity_estimate,
        "capacity_per_instance": ctx.capacity_per_instance,
        "replicas": ctx.replicas,
        "ready": ctx.ready,
        "min_instance": ctx.min_instance,
        "max_instance": ctx.max_instance,
        "window_max": max(window) if window else None,
        "observed_for_s": _since(state.observed_since, ctx.now),
        "breach_for_s": _since(state.breach_since, ctx.now),
        "idle_for_s": _since(state.idle_since, ctx.now),
    }
