"""The scaling decision, as small pure functions in stages.

``decide(context, state)`` → ``(Decision, new state)``. No I/O and no clock: ``now`` is in the
context, so tests step it. Replicas are sized from **concurrency**, as Knative's KPA does:
requests in flight plus queued at the gateway, against what one instance holds within the SLO
(measured: :mod:`scaler.capacity`; the engine's ``max-num-seqs`` until it is) at a target
utilisation. Concurrency
leads latency: it rises the moment a burst arrives, while latency grows only once a queue has
built. Latency (the SLO ratio at the gateway) corrects the per-instance capacity.

1. **Signals** (:func:`measure`). Concurrency now, and its mean over the *panic window* (a few
   seconds) and over the *stable window* (``downscale_delay_s``), from the samples the state
   keeps, weighted by time (passes come closer together while the gateway reports pressure).
   The SLO ratio: the worse of p95 TTFT / target and p95 TPOT / target (None without latency
   data). Idle: nothing in flight or queued, the spell counted from the last pass
   before the last answer (the gateway's count answered, or its rate, changed since it).
2. **Learning** (:func:`learn`). The capacity estimate is the concurrency one instance holds
   within the SLO, read from a curve of the SLO ratio by concurrency per instance
   (:mod:`scaler.capacity`). Each pass adds a sample: the window's ratio at the window's
   concurrency per ready instance (its mean for a miss, its lowest for a met SLO), when no queue
   at the gateway nor instances added for a breach disturbed the latency window; or, where the
   engines queue inside or fill their KV cache, a miss at what they were given. A miss moves the
   estimate at the pass that sees it. Until the curve says anything, the capacity stored with
   the model (learnt earlier, profiled, or a peer's of the same preset and resource type:
   ``known_capacity``), else the preset's ``capacity_per_instance``.
3. **Recommendation** (:func:`recommend`), by stage:

   - *panic*: more concurrency (now, over the panic window, or the *lead* of a step in
     arrivals: more over ``lead_window_s`` than the stable window's rate and Poisson noise
     explain, with the concurrency rising too, times the time a request spends in the
     system) than the ready instances hold
     at once, or requests held with nothing ready: up at once, sized to the demand,
     ``ceil(concurrency / (estimate * target_utilisation))``, not doubled to the maximum.
   - *breach*: the SLO missed for ``upscale_delay_s`` though the concurrency fits: the
     estimate was lowered; sized by it, and at least one more instance.
   - *steady*: ``ceil(mean concurrency / (estimate * target_utilisation))`` over the stable
     window and the panic window, whichever is higher, at least one, and with
     ``burst_capacity`` at least ``ceil((stable mean + burst_capacity) / estimate)``: up at
     once; down as the burst leaves the stable window, and only once the demand fits the
     fewer instances at ``scale_in_band`` of the target (no flapping at a boundary).
   - *room*: the steady stage would add instances for its estimate alone, but the SLO is met
     with ``room_ratio``'s margin over a settled window, the engines do not queue inside, and
     the demand is no higher than the peak the latency window has seen served: held. The
     estimate extrapolates from what was seen; latency says the instances hold it.
   - *probe*: held, with the SLO met with ``probe_ratio``'s margin, every instance ready and
     unchanged for a latency window: one instance fewer, where the peak per instance it
     leaves stays within the preset's target, below what the curve saw missing and where the
     line of its meets predicts room. The fewer show the concurrency the estimate could not.
   - *idle*: nothing answered, in flight or queued for ``idle_window_s`` (counted from the
     last answer, not from when its latency leaves the window): toward ``min_instance``,
     which may be 0. Until then an idle model is *steady*, and gives back instances as any.

4. **Steps and bounds**: at most ``max_step_up`` instances over those *ready* per decision (a
   pass does not pile up instances while earlier ones still start); scale-in one step
   (``max_step_down``) at a time, no lower than the highest recommendation over
   ``scale_in_hold_s`` (an instance is not given back for a dip shorter than that, nor before
   it served the burst it was added for), and not before the stable window was observed once;
   then :func:`domain.records.within_bounds`.

Every :class:`Decision` carries ``inputs``, a flat dict of every figure that led to it, for one
structured log line.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from domain.records import within_bounds
from scaler.capacity import (
    TOLERANCE,
    CapacityCurve,
    engine_full,
    estimate,
    observe_sample,
    predicted_ratio,
)
from scaler.metrics import LoadSnapshot

Inputs = Mapping[str, float | int | str | None]

# Concurrency now (or over the panic window) this much over the peak the latency window has
# seen served: beyond what latency says the instances hold.
RISING = 1.1


@dataclass(frozen=True)
class PolicyConfig:
    # Size for this fraction of what an instance holds at once, leaving headroom for bursts.
    target_utilisation: float = 0.7
    # The panic window: mean concurrency over it (or now) beyond what the ready instances hold
    # is a burst, acted on at once.
    panic_window_s: float = 6.0
    # The stable window: scale-in follows the mean concurrency over it.
    downscale_delay_s: float = 30.0
    # Scale-in goes no lower than the highest recommendation over this (hysteresis: no
    # instance is given back for a dip shorter than it, nor before it served a burst).
    scale_in_hold_s: float = 15.0
    # Instances added at most per decision, over those ready.
    max_step_up: int = 4
    # Instances removed at most per decision.
    max_step_down: int = 1
    # Scale-in only once the demand fits the fewer instances at this fraction of the target
    # (hysteresis: a demand hovering at the boundary between two counts does not reverse).
    scale_in_band: float = 0.85
    # Within 10% over target is noise, not a reason to lower the estimate.
    upscale_tolerance: float = 0.1
    # A breach of the SLO with the concurrency fitting must last this long to count.
    upscale_delay_s: float = 10.0
    # The window latency is read over: after a queue, latency stays high this long.
    latency_window_s: float = 30.0
    # No traffic for this long: toward min_instance (possibly 0).
    idle_window_s: float = 300.0
    # Requests of spare room kept beyond the stable window's mean concurrency, at what the
    # instances hold at once (Knative's target burst capacity): a burst this big is served
    # at once instead of waiting for an instance to start. 0: none beyond the utilisation.
    burst_capacity: float = 0.0
    # A probe: with the SLO met by this margin (the worse p95 over its target at most this)
    # through a settled latency window and every instance ready, a steady model gives back one
    # instance although its learnt capacity says it holds the demand. The capacity beyond the
    # concurrency seen is not known, and only fewer instances show it; a probe that misses is
    # a sample like any other (the estimate falls, the instance comes back). 0: never.
    probe_ratio: float = 0.6
    # While the SLO is met by this margin (the worse p95 over its target at most this, latency
    # settled), the steady stage adds no instance for a demand its estimate says is beyond
    # target: the estimate may be low (it extrapolates from what was seen, and probes show
    # more), and latency says the instances hold it. A burst (panic) and a breach still act
    # at once. 0: the estimate alone decides.
    room_ratio: float = 0.8
    # Arrivals over this window (counted from the concurrency and the count answered between
    # passes) that the stable window's rate does not explain (more than Poisson noise: mean +
    # 3 standard deviations), with the concurrency rising past its own noise, are a step; the
    # demand it leads to, the new rate times the time a request spends in the system (Little's
    # law over the stable window), is acted on at once.
    lead_window_s: float = 2.0


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
    # Requests one instance serves at once (the gateway's admission capacity per instance,
    # by default the engine's max-num-seqs).
    capacity_per_instance: int
    # The model's load; None when it could not be read (the policy holds).
    snapshot: LoadSnapshot | None
    # Concurrency per instance within the SLO stored with the model (learnt earlier, or
    # profiled), used until this process has learnt its own; None: not known.
    known_capacity: float | None = None


@dataclass(frozen=True)
class ScalingState:
    """What one model's decisions remember between passes."""

    # Requests one instance holds at once within the SLO; None: the preset's.
    capacity_estimate: float | None = None
    # When the current breach (with the concurrency fitting) began.
    breach_since: float | None = None
    # When latency was last disturbed: requests queued at the gateway, or instances added for a
    # breach (latency read within a window since is the queue's, or from before the change).
    unsettled_at: float | None = None
    # (time, recommended replicas) over the scale-in hold.
    recommendations: tuple[tuple[float, int], ...] = ()
    # When the current idle spell began; when the last pass was, and the request rate and
    # count answered it read.
    idle_since: float | None = None
    last_pass: float | None = None
    last_rate: float = 0.0
    last_answered: float | None = None
    # When the current unbroken run of readable snapshots began.
    observed_since: float | None = None
    # (time, concurrency) over the stable window.
    concurrency: tuple[tuple[float, float], ...] = ()
    # SLO ratio by concurrency per instance, learnt (scaler.capacity).
    curve: CapacityCurve | None = None
    # (time, concurrency per ready instance) over the latency window.
    per_instance: tuple[tuple[float, float], ...] = ()
    # Since when the ready instances have been as many as now: latency over a window since
    # then is these instances' own.
    ready_since: float | None = None
    ready_seen: int | None = None
    # (time, requests that arrived since the previous pass) over the stable window.
    arrivals: tuple[tuple[float, float], ...] = ()
    # (time, requests answered since the previous pass) over the stable window.
    answers: tuple[tuple[float, float], ...] = ()


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
    # In flight + queued at the gateway: now, and its means over the two windows.
    now: float
    panic_mean: float
    stable_mean: float
    # Concurrency now over what the ready instances hold at once.
    saturation: float
    idle: bool
    # Latency over target (beyond the tolerance), not explained by a recent queue.
    breach: bool
    # No queue at the gateway nor instances added for a breach over the latency window.
    settled: bool = False
    # The highest concurrency over the stable window before the panic window: what the
    # latency window has had time to show the instances serving.
    seen_peak: float = 0.0
    # The concurrency a step in arrivals leads to (0: no step).
    lead: float = 0.0


def slo_ratio(snap: LoadSnapshot, ttft_target_ms: float, tpot_target_ms: float) -> float | None:
    """The worse of p95/target over TTFT and TPOT; None without latency data."""
    ratios = []
    if snap.ttft_p95_ms is not None:
        ratios.append(snap.ttft_p95_ms / ttft_target_ms)
    if snap.tpot_p95_ms is not None:
        ratios.append(snap.tpot_p95_ms / tpot_target_ms)
    return max(ratios) if ratios else None


def _mean(samples: tuple[tuple[float, float], ...], since: float) -> float:
    """Concurrency's mean over the time from ``since`` to the newest sample, each sample
    holding until the next (as a gauge does): passes come closer together under pressure
    (the gateway asks for one when a model is at capacity), and their samples must not
    outweigh the quiet ones. A lone sample is its own mean."""
    total = weight = 0.0
    for (t, c), (t_next, _) in itertools.pairwise(samples):
        if t_next > since:
            held = t_next - max(t, since)
            total, weight = total + c * held, weight + held
    if weight > 0:
        return total / weight
    inside = [c for t, c in samples if t > since]
    return sum(inside) / len(inside) if inside else 0.0


def observe(
    state: ScalingState, ctx: ScalingContext, snap: LoadSnapshot, config: PolicyConfig
) -> ScalingState:
    """The state with this pass's concurrency sample and spells."""
    now = ctx.now
    concurrency = snap.in_flight + snap.queued
    kept = tuple((t, c) for t, c in state.concurrency if t > now - config.downscale_delay_s)
    per_instance = tuple((t, c) for t, c in state.per_instance if t > now - config.latency_window_s)
    # The windowed rate and latency of the last requests linger for a window, but the idle
    # spell begins with the last answer. Nothing in flight or queued now, but something was at
    # the last pass, or answered since it (the count answered changed; without the count, the
    # rate rose by half a request over the window): the last answer came between the two
    # passes, and the spell is counted from the last pass, so the model is back at
    # min_instance within the idle window and one interval of that answer.
    if snap.answered_total is not None and state.last_answered is not None:
        answered = snap.answered_total != state.last_answered
    else:
        answered = snap.request_rate > state.last_rate + 0.5 / config.latency_window_s
    if concurrency > 0:
        idle_since = None
    elif answered or state.idle_since is None:
        idle_since = _keep(state.last_pass, now)
    else:
        idle_since = state.idle_since
    window = now - config.downscale_delay_s
    arrivals = tuple((t, n) for t, n in state.arrivals if t > window)
    answers = tuple((t, n) for t, n in state.answers if t > window)
    if state.concurrency and snap.answered_total is not None and state.last_answered is not None:
        done = max(snap.answered_total - state.last_answered, 0.0)
        came = max(concurrency - state.concurrency[-1][1] + done, 0.0)
        arrivals, answers = (*arrivals, (now, came)), (*answers, (now, done))
    same = state.ready_seen == ctx.ready
    return replace(
        state,
        ready_since=state.ready_since if same and state.ready_since is not None else now,
        ready_seen=ctx.ready,
        arrivals=arrivals,
        answers=answers,
        concurrency=(*kept, (now, concurrency)),
        last_pass=now,
        last_rate=snap.request_rate,
        last_answered=snap.answered_total,
        unsettled_at=now if snap.queued > 0 else state.unsettled_at,
        idle_since=idle_since,
        observed_since=_keep(state.observed_since, now),
        per_instance=(*per_instance, (now, concurrency / ctx.ready)) if ctx.ready else per_instance,
    )


def measure(
    ctx: ScalingContext, snap: LoadSnapshot, state: ScalingState, config: PolicyConfig
) -> Signals:
    ratio = slo_ratio(snap, ctx.ttft_target_ms, ctx.tpot_target_ms)
    now_c = snap.in_flight + snap.queued
    settled = state.unsettled_at is None or ctx.now - state.unsettled_at >= config.latency_window_s
    loaded = now_c > 0 or snap.request_rate > 0
    breach = ratio is not None and ratio > 1 + config.upscale_tolerance and settled and loaded
    stable_mean = _mean(state.concurrency, ctx.now - config.downscale_delay_s)
    return Signals(
        ratio=ratio,
        now=now_c,
        panic_mean=_mean(state.concurrency, ctx.now - config.panic_window_s),
        stable_mean=stable_mean,
        saturation=now_c / (max(ctx.ready, 1) * max(ctx.capacity_per_instance, 1)),
        idle=state.idle_since is not None and ctx.now - state.idle_since >= config.idle_window_s,
        breach=breach,
        settled=settled,
        seen_peak=max(
            (c for t, c in state.concurrency if t <= ctx.now - config.panic_window_s), default=0.0
        ),
        lead=lead(state, ctx.now, stable_mean, config),
    )


def lead(state: ScalingState, now: float, mean: float, config: PolicyConfig) -> float:
    """The concurrency a step in arrivals leads to (see ``PolicyConfig.lead_window_s``); 0
    without a step (arrivals beyond the stable rate's Poisson noise, and the concurrency now
    beyond its stable ``mean``'s), or before the stable window has answers to tell the time in
    the system."""
    if config.lead_window_s <= 0 or len(state.arrivals) < 2:
        return 0.0
    span = now - state.arrivals[0][0]
    if span < 2 * config.lead_window_s:
        return 0.0
    short = sum(n for t, n in state.arrivals if t > now - config.lead_window_s)
    before = [(t, n) for t, n in state.arrivals if t <= now - config.lead_window_s]
    base_s = max(now - config.lead_window_s - state.arrivals[0][0], 1e-9)
    expected = sum(n for _, n in before) / base_s * config.lead_window_s
    if short <= expected + 3 * math.sqrt(expected) + 1:
        return 0.0
    answered = sum(n for _, n in state.answers)
    if answered <= 0 or mean <= 0:
        return 0.0
    # Corroborated by the concurrency, rising past its own noise: arrivals are counted from
    # samples read between passes, and a read that lands late lumps two intervals into one.
    if state.concurrency[-1][1] <= mean + 2 * math.sqrt(mean) + 1:
        return 0.0
    in_system_s = mean / (answered / span)
    # The step's own rate: its newest half window, as the whole one still holds the rate before.
    half = config.lead_window_s / 2
    recent = sum(n for t, n in state.arrivals if t > now - half)
    return max(short / config.lead_window_s, recent / half) * in_system_s


def learn(
    state: ScalingState, ctx: ScalingContext, snap: LoadSnapshot, sig: Signals,
    config: PolicyConfig,
) -> tuple[CapacityCurve, float | None]:  # fmt: skip
    """The capacity curve after this pass, and the concurrency per instance it puts within
    the SLO (:mod:`scaler.capacity`); without enough samples, the one stored with the model,
    else None (the preset's)."""
    preset = max(ctx.capacity_per_instance, 1)
    curve = state.curve or CapacityCurve.for_preset(preset)
    if ctx.ready >= 1:
        waiting = None if snap.engine_waiting is None else snap.engine_waiting / ctx.ready
        full = engine_full(snap.in_flight / ctx.ready, waiting, snap.kv_usage)
        if full is not None:
            curve = observe_sample(curve, *full)
        elif sig.ratio is not None and sig.settled and sig.now > 0:
            # The latency is the window's: a miss is paired with the window's mean concurrency
            # per instance; a met SLO too where the ready instances were as many all through
            # the window, else only with its lowest (while instances come and go, the window's
            # earlier, higher concurrency did not all meet it).
            window = ctx.now - config.latency_window_s
            seen = [c for t, c in state.per_instance if t > window]
            missed = sig.ratio > 1 + TOLERANCE
            mean = missed or not _changing(state, ctx.now, config)
            per_instance = _mean(state.per_instance, window) if mean else min(seen)
            tokens = None if snap.tokens_per_s is None else snap.tokens_per_s / ctx.ready
            curve = observe_sample(curve, per_instance, sig.ratio, tokens)
    learnt = estimate(curve, preset)
    if learnt is None and ctx.known_capacity is not None:
        learnt = min(ctx.known_capacity, float(preset))
    return curve, learnt


def per_instance_target(ctx: ScalingContext, estimate: float | None, config: PolicyConfig) -> float:
    capacity = float(max(ctx.capacity_per_instance, 1)) if estimate is None else estimate
    return max(capacity * config.target_utilisation, 1e-9)


def recommend(
    ctx: ScalingContext, sig: Signals, estimate: float | None, breach_lasted: bool,
    config: PolicyConfig, state: ScalingState | None = None,
) -> tuple[str, int]:  # fmt: skip
    """(stage, replicas it asks for), before steps and bounds."""
    if sig.idle:
        return "idle", ctx.min_instance
    target = per_instance_target(ctx, estimate, config)
    holds = ctx.ready * (float(ctx.capacity_per_instance) if estimate is None else estimate)
    burst = max(sig.now, sig.panic_mean, sig.lead)
    demand = max(sig.stable_mean, sig.panic_mean)
    # Latency says the ready instances hold a demand no higher than one they served within
    # its window, within what the engines hold at the preset's target: the estimate's
    # "beyond" is the estimate's doubt.
    roomy = (
        _room(sig, config)
        and not _engines_full(ctx)
        and burst <= sig.seen_peak * RISING
        and demand <= ctx.ready * per_instance_target(ctx, None, config)
    )
    if burst > holds and not roomy:
        return "panic", max(math.ceil(burst / target), 1)
    steady = max(math.ceil(demand / target), 1)
    if steady < ctx.replicas:
        # Fewer only with room to spare: demand hovering at a boundary does not flap.
        steady = max(steady, math.ceil(demand / (target * config.scale_in_band)))
    stage = "steady"
    if steady > ctx.replicas and roomy:
        stage, steady = "room", ctx.replicas
    if config.burst_capacity > 0:
        whole = float(ctx.capacity_per_instance) if estimate is None else estimate
        spare = math.ceil((sig.stable_mean + config.burst_capacity) / max(whole, 1e-9))
        stage, steady = ("steady", spare) if spare > steady else (stage, steady)
    if breach_lasted:
        return "breach", max(steady, ctx.ready + 1)
    held = min(steady, ctx.max_instance) == ctx.replicas
    if held and state is not None and _may_probe(ctx, sig, demand, state, config):
        return "probe", ctx.replicas - 1
    return stage, steady


def _engines_full(ctx: ScalingContext) -> bool:
    """The engines say they hold fewer than they were given (a queue inside, KV cache full)."""
    snap = ctx.snapshot
    if snap is None or ctx.ready < 1:
        return False
    waiting = None if snap.engine_waiting is None else snap.engine_waiting / ctx.ready
    return engine_full(snap.in_flight / ctx.ready, waiting, snap.kv_usage) is not None


def _room(sig: Signals, config: PolicyConfig) -> bool:
    """The SLO met with ``room_ratio``'s margin over a settled latency window."""
    return sig.ratio is not None and sig.settled and sig.ratio <= config.room_ratio


def _may_probe(
    ctx: ScalingContext, sig: Signals, demand: float, state: ScalingState, config: PolicyConfig
) -> bool:
    """Whether one instance fewer is worth trying (see ``PolicyConfig.probe_ratio``): the SLO met
    with room, latency settled, all instances ready, demand no higher than the latency window
    has seen served (``seen_peak``), none given back within a latency window, and the peak's
    concurrency per instance it would leave within the preset's target (with ``burst_capacity``'s
    room), where the line of the curve's meets (if it has one) predicts a ratio halfway between
    ``probe_ratio`` and ``room_ratio`` at most (so a probe does not end past the room and back),
    and no higher than any the curve saw missing (a probe there re-measures the miss)."""
    if config.probe_ratio <= 0 or sig.ratio is None or sig.ratio > config.probe_ratio:
        return False
    if not sig.settled or ctx.replicas < 2 or ctx.ready < ctx.replicas or demand <= 0:
        return False
    if max(sig.now, sig.panic_mean) > sig.seen_peak or _changing(state, ctx.now, config):
        return False
    after = max(demand, sig.seen_peak) / (ctx.replicas - 1)
    if after > per_instance_target(ctx, None, config):
        return False
    whole = float(max(ctx.capacity_per_instance, 1))
    if math.ceil((sig.stable_mean + config.burst_capacity) / whole) > ctx.replicas - 1:
        return False  # the spare room burst_capacity asks for, even at the preset's capacity
    curve = state.curve
    if curve is None:
        return True
    predicted = predicted_ratio(curve, after)
    if predicted is not None and predicted > (config.probe_ratio + config.room_ratio) / 2:
        return False  # the curve's line says the fewer would come near the room's edge
    missed = [b.concurrency for b in curve.bins if b.ratio > 1 + TOLERANCE]
    return not missed or after <= min(missed)


def _changing(state: ScalingState, now: float, config: PolicyConfig) -> bool:
    """The ready instances changed within the latency window: its latency is not all theirs."""
    return now - _keep(state.ready_since, now) < config.latency_window_s


def _keep(since: float | None, now: float) -> float:
    """When a spell began: ``since`` if it is running, else now."""
    return now if since is None else since


def _since(then: float | None, now: float) -> float | None:
    return None if then is None else now - then


def _act(
    ctx: ScalingContext, stage: str, wanted: int, state: ScalingState, config: PolicyConfig
) -> tuple[int, str, ScalingState]:
    """Apply the steps, the stable window and the idle window to the recommendation."""
    now, replicas = ctx.now, ctx.replicas
    if stage == "idle":
        target = max(wanted, replicas - config.max_step_down)
        return target, "idle: scale toward min_instance" if target < replicas else "idle", state
    if wanted > replicas:
        ceiling = ctx.ready + config.max_step_up
        if ceiling <= replicas:
            return replicas, f"{stage}: {replicas - ctx.ready} instances still starting", state
        after = replace(state, breach_since=None, unsettled_at=now) if stage == "breach" else state
        return min(wanted, ceiling), f"{stage}: scale up to the demand", after
    if wanted == replicas or stage not in ("steady", "probe"):
        return replicas, "within target", state
    if stage == "probe" and now - _keep(state.observed_since, now) >= config.downscale_delay_s:
        # Its own hold: the peak of the stable window fits the fewer, and the ready instances
        # have been as many for a latency window.
        return replicas - 1, "probe: SLO met with room, one instance fewer", state
    held = max(n for t, n in state.recommendations)
    if held >= replicas:
        return replicas, f"held: {held} recommended within {config.scale_in_hold_s:.0f}s", state
    observed_for = now - _keep(state.observed_since, now)
    if observed_for < config.downscale_delay_s:
        return replicas, f"low for {observed_for:.0f}/{config.downscale_delay_s:.0f}s", state
    return max(held, replicas - config.max_step_down), "stable window: scale in", state


def decide(
    ctx: ScalingContext, state: ScalingState, config: PolicyConfig | None = None
) -> tuple[Decision, ScalingState]:
    config = config or PolicyConfig()
    snap = ctx.snapshot
    if snap is None:
        held = within_bounds(ctx.replicas, ctx.min_instance, ctx.max_instance)
        return Decision(held, "no metrics: hold", _inputs(ctx, None, state, "hold")), state
    state = observe(state, ctx, snap, config)
    sig = measure(ctx, snap, state, config)
    now = ctx.now
    state = replace(state, breach_since=_keep(state.breach_since, now) if sig.breach else None)
    breach_lasted = sig.breach and now - _keep(state.breach_since, now) >= config.upscale_delay_s
    curve, learnt = learn(state, ctx, snap, sig, config)
    state = replace(state, curve=curve, capacity_estimate=learnt)
    estimate = learnt
    stage, wanted = recommend(ctx, sig, estimate, breach_lasted, config, state)
    kept = tuple((t, n) for t, n in state.recommendations if t > now - config.scale_in_hold_s)
    state = replace(state, recommendations=(*kept, (now, wanted)))
    target, reason, state = _act(ctx, stage, wanted, state, config)
    replicas = within_bounds(target, ctx.min_instance, ctx.max_instance)
    inputs = {**_inputs(ctx, sig, state, stage), "recommended": wanted}
    return Decision(replicas, reason, inputs), state


def _inputs(
    ctx: ScalingContext, sig: Signals | None, state: ScalingState, stage: str
) -> dict[str, float | int | str | None]:
    snap = ctx.snapshot or LoadSnapshot()
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
        "concurrency": sig.now if sig else None,
        "panic_concurrency": sig.panic_mean if sig else None,
        "stable_concurrency": sig.stable_mean if sig else None,
        "saturation": sig.saturation if sig else None,
        "lead_concurrency": sig.lead if sig else None,
        "capacity_estimate": state.capacity_estimate,
        "capacity_per_instance": ctx.capacity_per_instance,
        "replicas": ctx.replicas,
        "ready": ctx.ready,
        "min_instance": ctx.min_instance,
        "max_instance": ctx.max_instance,
        "observed_for_s": _since(state.observed_since, ctx.now),
        "breach_for_s": _since(state.breach_since, ctx.now),
        "idle_for_s": _since(state.idle_since, ctx.now),
    }
