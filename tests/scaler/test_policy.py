"""The scaling policy, stepped with a fake clock through bursts, ramps, dips and idle spells."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from scaler.metrics import LoadSnapshot, histogram_quantile
from scaler.policy import Decision, PolicyConfig, ScalingContext, ScalingState, decide

CONFIG = PolicyConfig(
    upscale_delay_s=10, downscale_delay_s=60, idle_window_s=120, panic_window_s=6,
    latency_window_s=30, target_utilisation=0.7, scale_in_hold_s=15,
)  # fmt: skip
CAPACITY = 10  # requests one instance serves at once (max-num-seqs): 7 at the target
TTFT_TARGET_MS, TPOT_TARGET_MS = 1000.0, 20.0


def load(
    in_flight: float, queued: float = 0.0, ratio: float | None = 0.5, rate: float = 5.0,
    **fields: float,
) -> LoadSnapshot:  # fmt: skip
    """A snapshot of ``in_flight`` + ``queued`` requests whose TTFT is ``ratio`` times its
    target (TPOT well under)."""
    ttft = None if ratio is None else ratio * TTFT_TARGET_MS
    tpot = None if ratio is None else 5.0
    return LoadSnapshot(
        ttft, tpot, request_rate=rate, in_flight=in_flight, queued=queued, **fields
    )  # fmt: skip


IDLE = LoadSnapshot()


class Model:
    """One model under the policy: applies each decision; instances are ready at once
    unless ``starting`` says how many of the desired are not ready yet."""

    def __init__(self, replicas: int, min_instance: int = 1, max_instance: int = 10) -> None:
        self.replicas, self.min_instance, self.max_instance = replicas, min_instance, max_instance
        self.state = ScalingState()
        self.starting = 0
        self.decisions: list[Decision] = []
        self.config = CONFIG

    def step(self, now: float, snapshot: LoadSnapshot | None) -> Decision:
        ctx = ScalingContext(
            now=now, replicas=self.replicas, ready=max(self.replicas - self.starting, 0),
            min_instance=self.min_instance, max_instance=self.max_instance,
            ttft_target_ms=TTFT_TARGET_MS, tpot_target_ms=TPOT_TARGET_MS,
            capacity_per_instance=CAPACITY, snapshot=snapshot,
        )  # fmt: skip
        decision, self.state = decide(ctx, self.state, self.config)
        self.replicas = decision.replicas
        self.decisions.append(decision)
        return decision

    def run(self, times: range, snapshot: LoadSnapshot | None) -> list[int]:
        return [self.step(t, snapshot).replicas for t in times]


def test_a_burst_scales_up_at_once_sized_to_its_concurrency() -> None:
    model = Model(replicas=2)  # holds 20 at once
    decision = model.step(0, load(in_flight=20, queued=10))
    # ceil(30 / (10 * 0.7)) = 5: neither doubling nor the maximum.
    assert decision.replicas == 5
    assert decision.inputs["stage"] == "panic"
    assert decision.inputs["recommended"] == 5


def test_a_burst_beyond_one_step_is_taken_a_bounded_step_at_a_time() -> None:
    model = Model(replicas=1, max_instance=20)
    assert model.step(0, load(in_flight=10, queued=90)).replicas == 5  # ready 1 + max_step_up
    assert model.decisions[-1].inputs["recommended"] == 15


def test_a_burst_does_not_pile_up_instances_while_they_start() -> None:
    model = Model(replicas=1, max_instance=20)
    model.step(0, load(in_flight=10, queued=90))
    model.starting = 4
    assert model.run(range(1, 10), load(in_flight=10, queued=90)) == [5] * 9
    assert model.decisions[-1].reason == "panic: 4 instances still starting"
    model.starting = 0
    assert model.step(10, load(in_flight=50, queued=50)).replicas == 9  # 5 ready + 4


def test_concurrency_nearing_what_instances_hold_scales_up_before_anything_queues() -> None:
    model = Model(replicas=2)  # holds 20, sized for 14
    decision = model.step(0, load(in_flight=16, ratio=0.5))
    assert decision.replicas == 3 and decision.inputs["stage"] == "steady"


def test_a_request_held_for_a_start_scales_from_zero() -> None:
    model = Model(replicas=0, min_instance=0)
    assert model.step(0, LoadSnapshot(queued=1)).replicas == 1


def test_burst_capacity_keeps_spare_room_beyond_the_mean_but_not_when_idle() -> None:
    spare = replace(CONFIG, burst_capacity=8)
    plain, roomy = Model(replicas=1, min_instance=0), Model(replicas=1, min_instance=0)
    roomy.config = spare
    # 5 in flight fit one instance at the target (7), but not 8 more on top of them (10 each).
    assert plain.run(range(0, 90), load(in_flight=5))[-1] == 1
    assert roomy.run(range(0, 90), load(in_flight=5))[-1] == 2  # ceil((5 + 8) / 10)
    assert roomy.decisions[0].reason == "steady: scale up to the demand"
    assert roomy.run(range(90, 400, 30), IDLE)[-1] == 0  # idle goes to min_instance still


def test_steady_load_within_target_holds() -> None:
    model = Model(replicas=3)  # ceil(20 / 7) = 3
    assert model.run(range(0, 600, 1), load(in_flight=20)) == [3] * 600


def test_a_breach_the_concurrency_does_not_explain_lowers_the_capacity_within_the_pass() -> None:
    model = Model(replicas=2)
    # 4 per instance fits the preset's 10, but the engines miss the SLO at it (TPOT 1.5x).
    slow = LoadSnapshot(ttft_p95_ms=100, tpot_p95_ms=30, request_rate=5, in_flight=8)
    decision = model.step(0, slow)
    # Capacity 4 / 1.5 per instance; ceil(8 / (4 / 1.5 * 0.7)) = 5, at the first pass.
    assert model.state.capacity_estimate == pytest.approx(4 / 1.5)
    assert decision.replicas == 5 and decision.inputs["capacity_estimate"] == pytest.approx(4 / 1.5)


def test_a_breach_without_load_to_learn_from_adds_one() -> None:
    model = Model(replicas=2)
    slow = LoadSnapshot(ttft_p95_ms=3000, tpot_p95_ms=5, request_rate=1)
    assert model.run(range(0, 11), slow) == [2] * 10 + [3]
    assert model.state.capacity_estimate is None
    # The next step waits for the latency window to show the instance added (30 s), then
    # for the breach to last the delay again (10 s).
    assert model.run(range(11, 50), slow) == [3] * 39
    assert model.step(50, slow).replicas == 4


def test_a_breach_within_tolerance_does_not_scale() -> None:
    model = Model(replicas=3)
    assert model.run(range(0, 300, 1), load(in_flight=20, ratio=1.05)) == [3] * 300


def test_latency_left_over_from_a_queue_is_not_a_breach() -> None:
    model = Model(replicas=3)
    model.run(range(0, 3), load(in_flight=20, queued=12, ratio=3.0))
    assert model.replicas == 5  # ceil(32 / 7)
    # The queue cleared; the latency window still holds its p95 for 30 s.
    assert model.run(range(3, 32), load(in_flight=20, ratio=3.0)) == [5] * 29
    assert model.state.capacity_estimate is None


def test_engines_queueing_inside_lower_the_capacity_to_what_they_run() -> None:
    model = Model(replicas=2)
    decision = model.step(0, load(in_flight=10, engine_waiting=4))
    assert model.state.capacity_estimate == pytest.approx(3)  # (10 - 4) / 2 running each
    # 10 requests beyond the 6 the two instances run: ceil(10 / (3 * 0.7)) = 5.
    assert (decision.replicas, decision.inputs["stage"]) == (5, "panic")


def test_a_full_kv_cache_lowers_the_capacity_below_what_the_engines_hold() -> None:
    model = Model(replicas=2)
    model.step(0, load(in_flight=12, kv_usage=0.97))
    assert model.state.capacity_estimate == pytest.approx(6 / 1.1)


def test_a_short_dip_does_not_scale_in() -> None:
    model = Model(replicas=4)
    steady = model.run(range(0, 60), load(in_flight=25))
    dip = model.run(range(60, 66), load(in_flight=5))
    back = model.run(range(66, 200), load(in_flight=25))
    assert set(steady + dip + back) == {4}


def test_after_a_burst_instances_are_given_back_as_it_leaves_the_stable_window() -> None:
    model = Model(replicas=6)
    model.run(range(0, 60), load(in_flight=40))  # ceil(40 / 7) = 6
    after = model.run(range(60, 140), load(in_flight=5))
    assert after == sorted(after, reverse=True)  # a step at a time, never back up
    assert after[:5] == [6] * 5  # the stable window's mean still holds them
    assert 1 < after[35] < 6  # on the way down halfway through the window
    assert after[-1] == 1  # ceil(5 / 7)
    assert model.decisions[-1].reason == "within target"
    assert any(d.reason == "stable window: scale in" for d in model.decisions)


def test_passes_closer_together_in_a_burst_do_not_hold_instances_longer() -> None:
    """The gateway asks for a pass while a model is at capacity: a burst seen every 0.1 s
    weighs in the stable window what it weighs seen every second."""
    every_second, pressed = Model(replicas=1), Model(replicas=1)
    quiet = load(in_flight=2, ratio=None)  # no latency: the capacity stays the preset's
    for model, step in ((every_second, 1.0), (pressed, 0.1)):
        model.run(range(0, 60), quiet)
        for k in range(round(3 / step)):
            model.step(60 + k * step, load(in_flight=30, queued=10))
        assert model.replicas == 5  # a bounded step (4) over the one ready
    after = [every_second.run(range(63, 130), quiet)]
    after.append(pressed.run(range(63, 130), quiet))
    assert after[0] == after[1]
    assert after[0][-1] == 1 and 1 in after[0][40:]  # given back within the stable window


def test_no_scale_in_before_the_stable_window_was_observed() -> None:
    model = Model(replicas=4)
    assert model.run(range(0, 60), load(in_flight=2)) == [4] * 60
    assert model.step(60, load(in_flight=2)).replicas == 3


def test_an_instance_added_for_a_burst_is_held_before_it_is_given_back() -> None:
    model = Model(replicas=1)
    model.run(range(0, 70), load(in_flight=2))
    assert model.step(70, load(in_flight=10, queued=2)).replicas == 2  # ceil(12 / 7)
    # Recommended 1 from the next pass on, but 2 was within the 15 s hold until t=85.
    assert model.run(range(71, 87), load(in_flight=2)) == [2] * 14 + [1, 1]
    assert model.decisions[-3].reason == "held: 2 recommended within 15s"


def test_idle_is_a_signal() -> None:
    model = Model(replicas=3, min_instance=0)
    replicas = model.run(range(0, 240, 30), IDLE)
    # Once the stable window was observed (60 s), as any light load: toward one instance.
    # After the idle window (120 s), toward min_instance, a step at a time.
    assert replicas == [3, 3, 2, 1, 0, 0, 0, 0]
    assert model.decisions[4].reason == "idle: scale toward min_instance"


def test_the_idle_spell_begins_with_the_last_answer_not_when_its_latency_leaves_the_window() -> (
    None
):
    model = Model(replicas=1, min_instance=0)
    model.step(0, load(in_flight=1, rate=1.0))
    # Nothing in flight from t=1; the window's rate and p95 still show the last requests. The
    # last answer came after t=0: the spell is counted from there, so the model is at
    # min_instance within the idle window (120 s) and one interval of the answer.
    lingering = load(in_flight=0, rate=1.0, ratio=0.5)
    assert model.run(range(1, 120), lingering) == [1] * 119
    assert model.decisions[-1].inputs["idle_for_s"] == 119
    assert model.step(120, lingering).replicas == 0


def test_a_request_answered_between_two_passes_ends_the_idle_spell() -> None:
    model = Model(replicas=1, min_instance=0)
    model.run(range(0, 100), load(in_flight=0, rate=0.5))
    # One more request answered over a 30 s window: the rate rose by 1/30.
    assert model.step(100, load(in_flight=0, rate=0.5 + 1 / 30)).replicas == 1
    # The spell begins again at the last pass before the answer.
    assert model.run(range(101, 219), load(in_flight=0, rate=0.5)) == [1] * 118
    assert model.step(219, load(in_flight=0, rate=0.5)).replicas == 0


def test_an_answer_the_falling_rate_hides_still_starts_the_idle_spell_over() -> None:
    model = Model(replicas=1, min_instance=0)
    model.step(0, load(in_flight=3, rate=1.0, answered_total=50))
    # Nothing in flight from t=1: the spell begins; the rate falls as requests leave the window.
    model.run(range(1, 60), load(in_flight=0, rate=0.5, answered_total=53))
    # A short request came and went between two passes: the count says so, though the rate
    # went on falling.
    assert model.step(60, load(in_flight=0, rate=0.4, answered_total=54)).replicas == 1
    assert model.decisions[-1].inputs["idle_for_s"] == 1  # from the last pass before it
    assert model.run(range(61, 179), load(in_flight=0, rate=0.3, answered_total=54)) == [1] * 118
    assert model.step(179, load(in_flight=0, rate=0.2, answered_total=54)).replicas == 0


def test_idle_stops_at_min_instance() -> None:
    model = Model(replicas=3, min_instance=2)
    assert model.run(range(0, 300, 30), IDLE)[-1] == 2


def test_traffic_ends_the_idle_spell() -> None:
    model = Model(replicas=2, min_instance=0)
    model.run(range(0, 100, 30), IDLE)
    model.step(100, load(in_flight=12))  # needs both instances
    assert model.replicas == 2
    # The idle window starts over from t=100, the last pass that saw the traffic: nothing
    # toward 0 before t=220.
    assert 0 not in model.run(range(130, 220, 30), IDLE)
    assert model.step(220, IDLE).replicas == 0


def test_unreadable_metrics_hold() -> None:
    model = Model(replicas=3)
    _ = model.run(range(0, 50, 10), load(in_flight=20))
    state = model.state
    decision = model.step(60, None)
    assert decision.replicas == 3 and decision.reason == "no metrics: hold"
    assert model.state == state
    assert model.run(range(70, 600, 10), None) == [3] * 53


def test_bounds_are_respected() -> None:
    assert Model(replicas=8).step(0, load(in_flight=80, queued=900)).replicas == 10
    assert Model(replicas=10).run(range(0, 60, 5), load(in_flight=100, queued=99)) == [10] * 12
    assert Model(replicas=0, min_instance=2).step(0, None).replicas == 2
    model = Model(replicas=2, min_instance=2)
    assert model.run(range(0, 600, 10), load(in_flight=1, ratio=0.2, rate=0.1)) == [2] * 60


def test_the_decision_carries_every_input_flat() -> None:
    decision = Model(replicas=2).step(0, load(in_flight=10, queued=0, ratio=0.9, rate=12))
    inputs = decision.inputs
    assert all(v is None or isinstance(v, int | float | str) for v in inputs.values())
    assert inputs["slo_ratio"] == pytest.approx(0.9) and decision.ratio == pytest.approx(0.9)
    assert inputs["request_rate"] == 12 and inputs["in_flight"] == 10
    assert inputs["saturation"] == pytest.approx(10 / 20)
    assert inputs["ready"] == 2 and inputs["replicas"] == 2 and inputs["stage"] == "steady"
    assert inputs["concurrency"] == 10 and inputs["stable_concurrency"] == 10
    assert {"capacity_estimate", "panic_concurrency", "breach_for_s", "ttft_target_ms"} <= set(
        inputs
    )


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


def test_demand_hovering_at_a_boundary_does_not_flap() -> None:
    """12 and 15 in flight by turns (7 per instance at the target: 2 instances hold 14): the
    model keeps 3 instead of going 3 → 2 → 3 with each swing."""
    model = Model(replicas=3)
    seen = []
    for t in range(0, 400):
        in_flight = 12 if (t // 40) % 2 == 0 else 15
        seen.append(model.step(t, load(in_flight=in_flight, ratio=None)).replicas)
    assert set(seen) == {3}


def test_latency_with_room_holds_a_demand_the_estimate_calls_too_much() -> None:
    """A capacity learnt low (twice the 2 per instance seen with the SLO met) sizes 12 in
    flight at 5 instances. With the SLO met with room and the demand steady, probes give
    instances back and room keeps the fewer (never back up), while a burst over them is
    still met at once."""
    model = Model(replicas=3)
    model.run(range(0, 40), load(in_flight=3, ratio=0.3))
    model.run(range(40, 80), load(in_flight=6, ratio=0.3))
    assert model.state.capacity_estimate == pytest.approx(4)
    rising = model.run(range(80, 90), load(in_flight=12, ratio=0.3))
    assert rising[-1] == 5  # ceil(12 / (4 * 0.7)): a rising demand is met by the estimate
    steady = model.run(range(90, 400), load(in_flight=12, ratio=0.3))
    assert steady == sorted(steady, reverse=True) and steady[-1] <= 3
    stages = {d.inputs["stage"] for d in model.decisions[90:]}
    assert {"probe", "room"} <= stages
    burst = model.step(400, load(in_flight=40, ratio=0.3))
    assert burst.inputs["stage"] == "panic" and burst.replicas > steady[-1]


def test_room_does_not_hide_engines_that_queue_inside() -> None:
    model = Model(replicas=2)
    decision = model.step(0, load(in_flight=10, ratio=0.3, engine_waiting=4))
    assert decision.inputs["stage"] == "panic" and decision.replicas > 2


class OpenLoop:
    """Arrivals at a rate per second, each in the system ``in_system_s``: the gateway's
    concurrency and count answered as the policy reads them, one pass a second."""

    def __init__(self, in_system_s: int = 4) -> None:
        self.in_system_s = in_system_s
        self.came: list[int] = []
        self.answered = 0

    def snapshot(self, arrivals: int) -> LoadSnapshot:
        self.came.append(arrivals)
        if len(self.came) > self.in_system_s:
            self.answered += self.came[-self.in_system_s - 1]
        in_flight = sum(self.came[-self.in_system_s :])
        return load(in_flight=in_flight, ratio=0.5, answered_total=float(self.answered))


def test_a_step_in_arrivals_leads_the_concurrency_it_will_bring() -> None:
    """2/s for a minute, then 12/s: one second into the step 18 are in flight, but 12/s for
    4 s each will be 48; the first pass sizes for the 48."""
    model, traffic = Model(replicas=2), OpenLoop()
    assert {model.step(t, traffic.snapshot(2)).replicas for t in range(60)} == {2}
    decision = model.step(60, traffic.snapshot(12))
    assert decision.inputs["concurrency"] == 18
    assert decision.inputs["lead_concurrency"] == pytest.approx(48, rel=0.1)
    assert decision.inputs["stage"] == "panic"
    # Sized for the lead at the capacity learnt, not for the 18 in flight.
    per_instance = float(decision.inputs["capacity_estimate"] or CAPACITY) * 0.7
    lead = float(decision.inputs["lead_concurrency"] or 0)
    assert decision.inputs["recommended"] == math.ceil(lead / per_instance)
    assert math.ceil(18 / per_instance) < math.ceil(lead / per_instance)


def test_poisson_noise_is_not_a_step() -> None:
    rng = random.Random(7)
    model, traffic = Model(replicas=2), OpenLoop()
    leads = []
    for t in range(600):
        arrivals = sum(rng.random() < 0.2 for _ in range(10))  # about 2 a second
        model.step(t, traffic.snapshot(arrivals))
        leads.append(model.decisions[-1].inputs["lead_concurrency"])
    assert sum(1 for lead in leads if lead) <= 3  # mean + 3 standard deviations, per pass


def test_a_lumped_read_of_the_count_answered_is_not_a_step() -> None:
    """A collection that lands late counts two intervals' answers in one pass: many arrivals
    by the arithmetic, but the concurrency did not rise with them, so no step."""
    model, traffic = Model(replicas=5), OpenLoop()
    for t in range(60):
        model.step(t, traffic.snapshot(9))
    lumped = replace(traffic.snapshot(9), answered_total=traffic.answered + 27.0)
    assert model.step(60, lumped).inputs["lead_concurrency"] == 0.0
