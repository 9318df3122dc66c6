"""The scaling policy, stepped with a fake clock."""

from __future__ import annotations

import pytest

from scaler.metrics import LatencySnapshot, histogram_quantile
from scaler.policy import Decision, PolicyConfig, ScalingContext, ScalingState, decide

CONFIG = PolicyConfig(upscale_delay_s=10, downscale_delay_s=60)


def _ctx(now: float, replicas: int, ttft_ms: float | None, tpot_ms: float | None = 10,
         waiting: int = 0) -> ScalingContext:  # fmt: skip
    snapshot = LatencySnapshot(ttft_p95_ms=ttft_ms, tpot_p95_ms=tpot_ms, waiting=waiting)
    return ScalingContext(
        now=now, replicas=replicas, min_instance=1, max_instance=4,
        ttft_target_ms=1000, tpot_target_ms=20, snapshot=snapshot,
    )  # fmt: skip


def _run(steps: list[ScalingContext]) -> list[Decision]:
    state = ScalingState()
    decisions = []
    for ctx in steps:
        decision, state = decide(ctx, state, CONFIG)
        decisions.append(decision)
    return decisions


def test_breach_scales_up_only_after_the_delay() -> None:
    decisions = _run([_ctx(t, 1, ttft_ms=2500) for t in (0, 5, 10)])
    assert [d.replicas for d in decisions] == [1, 1, 3]
    assert decisions[-1].reason == "scale up"


def test_short_burst_does_not_scale() -> None:
    decisions = _run([_ctx(0, 2, 3000), _ctx(5, 2, 500), _ctx(12, 2, 3000)])
    assert [d.replicas for d in decisions] == [2, 2, 2]


def test_tpot_breach_counts_as_much_as_ttft() -> None:
    decisions = _run([_ctx(0, 1, ttft_ms=100, tpot_ms=50), _ctx(10, 1, 100, 50)])
    assert decisions[-1].replicas == 3  # 50 ms against a 20 ms target: 2.5x


def test_scale_up_is_bounded_by_max_instance() -> None:
    decisions = _run([_ctx(0, 2, 10_000), _ctx(10, 2, 10_000)])
    assert decisions[-1].replicas == 4


def test_idle_model_keeps_its_replicas() -> None:
    decisions = _run([_ctx(t, 3, ttft_ms=None, tpot_ms=None) for t in (0, 100, 200)])
    assert [d.replicas for d in decisions] == [3, 3, 3]
    assert decisions[0].ratio is None


def test_scale_down_waits_longer_and_steps_by_one() -> None:
    decisions = _run([_ctx(t, 3, ttft_ms=100, tpot_ms=5) for t in (0, 30, 60)])
    assert [d.replicas for d in decisions] == [3, 3, 2]


def test_no_scale_down_while_requests_wait() -> None:
    decisions = _run([_ctx(t, 3, 100, 5, waiting=4) for t in (0, 60, 120)])
    assert [d.replicas for d in decisions] == [3, 3, 3]


def test_never_below_min_instance() -> None:
    decisions = _run([_ctx(t, 1, 10, 1) for t in (0, 60, 120)])
    assert {d.replicas for d in decisions} == {1}


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        ({0.1: 0, 0.5: 0, float("inf"): 0}, None),
        ({0.1: 50, 0.5: 100, float("inf"): 100}, 0.1 + 0.4 * (95 - 50) / 50),
        ({0.1: 100, 0.5: 100, float("inf"): 100}, 0.1 * 95 / 100),
        ({0.1: 0, 0.5: 0, float("inf"): 10}, 0.5),
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
