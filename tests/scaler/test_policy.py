"""The scaling policy, stepped with a fake clock through bursts, ramps, dips and idle spells."""

from __future__ import annotations

import math

import pytest

from scaler.metrics import LoadSnapshot, histogram_quantile
from scaler.policy import Decision, PolicyConfig, ScalingContext, ScalingState, decide

CONFIG = PolicyConfig(upscale_delay_s=10, downscale_delay_s=60, idle_window_s=120)
CAPACITY = 100  # requests one instance serves at once
TTFT_TARGET_MS, TPOT_TARGET_MS = 1000.0, 20.0


def load(ratio: float | None, rate: float, in_flight: float = 0.0, **fields: float) -> LoadSnapshot:
    """A snapshot whose TTFT is ``ratio`` times its target (TPOT well under)."""
    ttft = None if ratio is None else ratio * TTFT_TARGET_MS
    tpot = None if ratio is None else 5.0
    return LoadSnapshot(ttft, tpot, request_rate=rate, in_flight=in_flight, **fields)


IDLE = LoadSnapshot()


class Model:
    """One model under the policy: applies each decision; instances are ready at once
    unless ``starting`` says how many of the desired are not ready yet."""

    def __init__(self, replicas: int, min_instance: int = 1, max_instance: int = 10) -> None:
        self.replicas, self.min_instance, self.max_instance = replicas, min_instance, max_instance
        self.state = ScalingState()
        self.starting = 0
        self.decisions: list[Decision] = []

    def step(self, now: float, snapshot: LoadSnapshot | None) -> Decision:
        ctx = ScalingContext(
            now=now, replicas=self.replicas, ready=max(self.replicas - self.starting, 0),
            min_instance=self.min_instance, max_instance=self.max_instance,
            ttft_target_ms=TTFT_TARGET_MS, tpot_target_ms=TPOT_TARGET_MS,
            capacity_per_instance=CAPACITY, snapshot=snapshot,
        )  # fmt: skip
        decision, self.state = decide(ctx, self.state, CONFIG)
        self.replicas = decision.replicas
        self.decisions.append(decision)
        return decision

    def run(self, times: range, snapshot: LoadSnapshot | None) -> list[int]:
        return [self.step(t, snapshot).replicas for t in times]


def test_a_burst_scales_up_at_once_by_a_bounded_step() -> None:
    model = Model(replicas=2)
    decision = model.step(0, load(ratio=5.0, rate=30, in_flight=150))
    assert decision.replicas == 4  # at most doubling, with no upscale delay
    assert decision.inputs["stage"] == "panic"
    big = Model(replicas=6, max_instance=20)
    assert big.step(0, load(ratio=5.0, rate=90, in_flight=500)).replicas == 10  # +max_step_up


def test_a_burst_does_not_pile_up_instances_while_they_start() -> None:
    model = Model(replicas=2)
    model.step(0, load(ratio=5.0, rate=30, in_flight=150))
    model.starting = 2
    assert model.run(range(5, 60, 5), load(ratio=5.0, rate=30, in_flight=150)) == [4] * 11
    model.starting = 0
    assert model.step(60, load(ratio=5.0, rate=30, in_flight=150)).replicas == 8


def test_queued_work_beyond_what_ready_instances_absorb_is_a_burst() -> None:
    model = Model(replicas=1)
    decision = model.step(0, load(ratio=0.5, rate=10, in_flight=100, queued=80))
    assert decision.replicas == 2
    assert decision.inputs["stage"] == "panic"


def test_a_request_held_for_a_start_scales_from_zero() -> None:
    model = Model(replicas=0, min_instance=0)
    assert model.step(0, LoadSnapshot(queued=1)).replicas == 1


def test_a_breach_waits_the_upscale_delay_then_adds_one_without_an_estimate() -> None:
    model = Model(replicas=3)
    assert model.run(range(0, 15, 5), load(ratio=1.5, rate=30, in_flight=40)) == [3, 3, 4]
    assert model.decisions[-1].reason == "breach: scale up"
    # The next step waits a full delay again, for the new instance to take load.
    assert model.run(range(15, 35, 5), load(ratio=1.5, rate=30, in_flight=40)) == [4, 5, 5, 6]


def test_a_breach_within_tolerance_does_not_scale() -> None:
    model = Model(replicas=3)
    assert model.run(range(0, 300, 10), load(ratio=1.05, rate=30, in_flight=40)) == [3] * 30


def test_a_tpot_breach_counts_as_much_as_ttft() -> None:
    model = Model(replicas=2)
    tpot_breach = LoadSnapshot(ttft_p95_ms=100, tpot_p95_ms=30, request_rate=10, in_flight=20)
    assert model.run(range(0, 15, 5), tpot_breach) == [2, 2, 3]


def test_steady_load_meeting_the_slo_holds() -> None:
    model = Model(replicas=3)
    assert model.run(range(0, 600, 10), load(ratio=0.8, rate=30, in_flight=60)) == [3] * 60
    assert model.state.capacity_estimate == pytest.approx(10)  # 30 rps over 3 instances


def test_a_lighter_load_meeting_the_slo_does_not_lower_the_estimate() -> None:
    model = Model(replicas=3)
    model.run(range(0, 100, 10), load(ratio=0.8, rate=30, in_flight=60))
    model.run(range(100, 200, 10), load(ratio=0.6, rate=15, in_flight=40))
    assert model.state.capacity_estimate == pytest.approx(10)


def _learn(model: Model, until: int) -> None:
    """Four instances meet the SLO at 9 rps each, under a substantial load."""
    model.run(range(0, until, 10), load(ratio=0.7, rate=36, in_flight=80))
    assert model.replicas == 4 and model.state.capacity_estimate == pytest.approx(9)


def test_a_slow_ramp_is_sized_by_the_learnt_estimate() -> None:
    model = Model(replicas=4, max_instance=20)
    _learn(model, until=100)
    # 40 rps now breaches, and latency grows much faster than load: 1.9x the target.
    replicas = model.run(range(100, 115, 5), load(ratio=1.9, rate=40, in_flight=90))
    # ceil(40 / (9 * 0.8)) = 6; not 4 * 1.9 -> 8, nor the maximum.
    assert replicas == [4, 4, 6]
    decision = model.decisions[-1]
    assert decision.inputs["capacity_estimate"] == pytest.approx(9)
    assert decision.inputs["recommended"] == 6


def test_a_short_dip_does_not_scale_in() -> None:
    model = Model(replicas=4)
    _learn(model, until=100)
    dip = model.run(range(100, 130, 10), load(ratio=0.3, rate=5, in_flight=5))
    back = model.run(range(130, 400, 10), load(ratio=0.7, rate=36, in_flight=80))
    assert set(dip + back) == {4}


def test_sustained_low_load_scales_in_a_step_at_a_time_after_the_stable_window() -> None:
    model = Model(replicas=4)
    _learn(model, until=110)  # last recommendation of 4 at t=100
    # 9 rps needs ceil(9 / (9 * 0.8)) = 2 instances; TTFT is not below half its target.
    replicas = model.run(range(110, 200, 10), load(ratio=0.7, rate=9, in_flight=10))
    assert replicas == [4, 4, 4, 4, 4, 3, 2, 2, 2]
    assert model.decisions[-4].reason == "stable window: scale in"


def test_idle_is_a_signal() -> None:
    model = Model(replicas=3, min_instance=0)
    replicas = model.run(range(0, 240, 30), IDLE)
    assert replicas == [3, 3, 3, 3, 2, 1, 0, 0]  # after the idle window, a step at a time


def test_idle_stops_at_min_instance() -> None:
    model = Model(replicas=3, min_instance=2)
    assert model.run(range(0, 300, 30), IDLE)[-1] == 2


def test_traffic_ends_the_idle_spell() -> None:
    model = Model(replicas=2, min_instance=0)
    model.run(range(0, 100, 30), IDLE)
    model.step(100, load(ratio=0.5, rate=10, in_flight=100))  # needs both instances
    assert model.run(range(130, 230, 30), IDLE) == [2, 2, 2, 2]  # the window starts over


def test_unreadable_metrics_hold() -> None:
    model = Model(replicas=3)
    _ = model.run(range(0, 50, 10), load(ratio=0.7, rate=36, in_flight=80))
    state = model.state
    decision = model.step(60, None)
    assert decision.replicas == 3 and decision.reason == "no metrics: hold"
    assert model.state == state
    assert model.run(range(70, 600, 10), None) == [3] * 53


def test_bounds_are_respected() -> None:
    assert Model(replicas=8).step(0, load(ratio=5.0, rate=100, in_flight=900)).replicas == 10
    assert Model(replicas=10).run(range(0, 60, 5), load(ratio=3.0, rate=99)) == [10] * 12
    assert Model(replicas=0, min_instance=2).step(0, None).replicas == 2
    model = Model(replicas=2, min_instance=2)
    assert model.run(range(0, 600, 10), load(ratio=0.2, rate=0.1, in_flight=1)) == [2] * 60


def test_the_decision_carries_every_input_flat() -> None:
    decision = Model(replicas=2).step(0, load(ratio=1.5, rate=12, in_flight=30, queued=0))
    inputs = decision.inputs
    assert all(v is None or isinstance(v, int | float | str) for v in inputs.values())
    assert inputs["slo_ratio"] == pytest.approx(1.5) and decision.ratio == pytest.approx(1.5)
    assert inputs["request_rate"] == 12 and inputs["in_flight"] == 30
    assert inputs["saturation"] == pytest.approx(30 / 200)
    assert inputs["ready"] == 2 and inputs["replicas"] == 2 and inputs["stage"] == "breach"
    assert {"capacity_estimate", "window_max", "breach_for_s", "ttft_target_ms"} <= set(inputs)


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        ({0.1: 0, 0.5: 0, math.inf: 0}, None),
        ({0.1: 50, 0.5: 100, math.inf: 100}, 0.1 + 0.4 * (95 - 50) / 50),
        ({0.1: 100, 0.5: 100, math.inf: 100}, 0.1 * 95 / 100),
        ({0.1: 0, 0.5: 0, math.inf: 10}, 0.5),
    ],
)
def test_histogram_quantile_matches_prometheus(
    buckets: dict[float, float], expected: float | None
) -> None:
    result = histogram_quantile(0.95, buckets)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)
