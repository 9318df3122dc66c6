"""Capacity at the SLO, learnt: engines whose latency saturates well below max-num-seqs, a
fake clock stepping the policy, and the curve read back."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from scaler.capacity import CapacityCurve, engine_full, estimate, observe_sample
from scaler.metrics import LoadSnapshot
from scaler.policy import PolicyConfig, ScalingContext, ScalingState, decide

MAX_NUM_SEQS = 256
TTFT_TARGET_MS, TPOT_TARGET_MS = 1000.0, 50.0
CONFIG = PolicyConfig(latency_window_s=10, downscale_delay_s=30, scale_in_hold_s=15)


def tpot_ms(per_instance: float) -> float:
    """A vLLM-like decode: 12 ms a step, growing with the batch and the context it reads, and
    with prefills interleaved; 50 ms (the SLO) at 60 sequences, far below 256."""
    return 12 + 38 * (per_instance / 60) ** 1.5


def slo_ratio(per_instance: float) -> float:
    return tpot_ms(per_instance) / TPOT_TARGET_MS


def test_a_miss_above_meets_puts_the_capacity_where_the_ratio_reaches_one() -> None:
    curve = CapacityCurve.for_preset(MAX_NUM_SEQS)
    for c in (20.0, 40.0, 50.0, 70.0):
        curve = observe_sample(curve, c, slo_ratio(c))
    found = estimate(curve, MAX_NUM_SEQS)
    assert found is not None and 55 <= found <= 62  # 60 is where the curve crosses 1


def test_meets_only_extrapolate_no_further_than_twice_the_highest_seen() -> None:
    curve = CapacityCurve.for_preset(MAX_NUM_SEQS)
    for c in (5.0, 10.0, 15.0):
        curve = observe_sample(curve, c, slo_ratio(c))
    assert estimate(curve, MAX_NUM_SEQS) == pytest.approx(30.0)


def test_too_few_samples_say_nothing_and_a_miss_speaks_at_once() -> None:
    curve = observe_sample(CapacityCurve.for_preset(MAX_NUM_SEQS), 10.0, 0.4)
    assert estimate(curve, MAX_NUM_SEQS) is None
    curve = observe_sample(curve, 90.0, 1.8)
    assert estimate(curve, MAX_NUM_SEQS) == pytest.approx(10 + 0.6 * 80 / 1.4)


def test_the_estimate_never_exceeds_the_engines_own_limit() -> None:
    curve = CapacityCurve.for_preset(4)
    for c in (1.0, 2.0, 3.0):
        curve = observe_sample(curve, c, 0.1)
    assert estimate(curve, 4) == 4


def test_engine_queue_and_kv_signals() -> None:
    assert engine_full(10, 0, 0.5) is None
    assert engine_full(10, 4, None) == (10, 10 / 6)
    assert engine_full(10, None, 0.97) == (10, pytest.approx(1.1))
    assert engine_full(0, 3, 1.0) is None


class Engines:
    """``ready`` instances of an engine with :func:`tpot_ms`; a decision's instances are ready
    at the next pass. The snapshot's latency is that of the concurrency per instance now."""

    def __init__(self) -> None:
        self.replicas = 1
        self.state = ScalingState()
        self.worst_ratio_after: dict[float, float] = {}
        self.config = CONFIG

    def step(self, now: float, concurrency: float) -> tuple[int, float | None]:
        per_instance = concurrency / self.replicas
        tpot = tpot_ms(per_instance) if concurrency else None
        snap = LoadSnapshot(
            ttft_p95_ms=200 if concurrency else None, tpot_p95_ms=tpot,
            request_rate=concurrency / 5, in_flight=concurrency,
        )  # fmt: skip
        ctx = ScalingContext(
            now=now, replicas=self.replicas, ready=self.replicas, min_instance=1,
            max_instance=12, ttft_target_ms=TTFT_TARGET_MS, tpot_target_ms=TPOT_TARGET_MS,
            capacity_per_instance=MAX_NUM_SEQS, snapshot=snap,
        )  # fmt: skip
        decision, self.state = decide(ctx, self.state, self.config)
        self.replicas = decision.replicas
        return self.replicas, self.state.capacity_estimate


def test_a_ramp_learns_the_capacity_at_the_slo_not_max_num_seqs() -> None:
    """Load ramps from 10 to 300 requests in flight on an engine that misses the SLO at 60 in
    flight. Sized by max-num-seqs (256), one instance would hold it all at 4x the TPOT target;
    learnt, every level is served within the SLO once its first passes are over, by far fewer
    instances than the maximum."""
    engines = Engines()
    now, worst = 0.0, 0.0
    for level in range(10, 301, 10):
        for k in range(20):  # 20 passes of 1 s at each level
            engines.step(now, float(level))
            now += 1.0
            if k >= 2:
                worst = max(worst, slo_ratio(level / engines.replicas))
    learnt = engines.state.capacity_estimate
    assert learnt is not None and 40 <= learnt <= 80  # the SLO's crossing is at 60
    assert worst <= 1.0
    assert engines.replicas <= math.ceil(300 / (40 * 0.7))


def test_a_step_far_above_what_was_seen_is_met_within_passes_not_windows() -> None:
    engines = Engines()
    now = 0.0
    for _ in range(60):
        engines.step(now, 20.0)
        now += 1.0
    before = engines.replicas
    replicas, _ = engines.step(now, 200.0)
    # The first pass of the step: the miss it sees lowers the capacity at once.
    assert replicas > before and replicas >= 4


def _run_step_after_quiet(config: PolicyConfig) -> tuple[list[int], float]:
    """10 in flight for a minute, then 100 for ten: the replicas after each pass at 100, and
    the worst SLO ratio once the step's first passes are over."""
    engines = Engines()
    engines.config = config
    now, replicas, worst = 0.0, [], 0.0
    for _ in range(60):
        engines.step(now, 10.0)
        now += 1.0
    for k in range(600):
        replicas.append(engines.step(now, 100.0)[0])
        now += 1.0
        if k >= 2:
            worst = max(worst, slo_ratio(100.0 / engines.replicas))
    return replicas, worst


def test_a_capacity_learnt_low_is_probed_up_to_what_the_instances_hold() -> None:
    """What was seen at 10 in flight puts the capacity at twice that at most, so the step to
    100 is met with many more instances than the engines need (the SLO's crossing is at 60
    per instance). Held there, they never see more per instance; probes give back one at a
    time while the SLO is met with room, so the replicas come down to what the curve allows
    at the probe's margin, with no miss and no reversal."""
    probed, worst = _run_step_after_quiet(CONFIG)
    unprobed, _ = _run_step_after_quiet(replace(CONFIG, probe_ratio=0))
    assert max(unprobed) >= 6 and unprobed[-1] >= 5  # held by the estimate from 10 in flight
    assert probed[-1] <= 3  # ceil(100 / 36): the ratio reaches 0.6 at 36 per instance
    assert worst <= 1.0
    peak = probed.index(max(probed))
    assert probed[peak:] == sorted(probed[peak:], reverse=True)  # down only, after the step
