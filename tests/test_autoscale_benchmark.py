"""The autoscale benchmark's traces: the Azure CSV sliced and replayed open-loop with its own
lengths, the synthetic shapes, and a short replay against a real ``aif serve``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks.autoscale import (
    AZURE_CSV,
    MAX_CONTEXT_TOKENS,
    SHAPES,
    TRACE_CHOICES,
    Aif,
    Phase,
    azure_trace,
    build_trace,
    figures,
    phase_report,
    read_azure,
    register,
    replay,
)

CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:47.1805900,12000,9000
2023-11-16 18:15:48.6805900,20,1
2023-11-16 18:15:56.6805900,100,10
"""


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(CSV)
    return path


def test_a_slice_of_the_csv_keeps_its_arrivals_and_lengths(tmp_path: Path) -> None:
    rows = read_azure(_csv(tmp_path), start_s=0.5, duration_s=5.0)
    assert rows == [(pytest.approx(0.0), 12000, 9000), (pytest.approx(1.5), 20, 1)]


def test_replayed_lengths_fit_the_model_and_prompts_have_their_token_counts(
    tmp_path: Path,
) -> None:
    trace = azure_trace(_csv(tmp_path), start_s=0.0, duration_s=60.0, seed=1)
    assert [round(a.at_s, 1) for a in trace] == [0.0, 0.5, 2.0, 10.0]
    assert len(trace[0].prompt.split()) == 374 and trace[0].max_tokens == 44
    long = trace[1]
    assert long.max_tokens == MAX_CONTEXT_TOKENS // 2
    assert len(long.prompt.split()) + long.max_tokens <= MAX_CONTEXT_TOKENS
    assert trace[2].max_tokens == 2  # at least two tokens, so TPOT is defined


@pytest.mark.skipif(not AZURE_CSV.exists(), reason="the shared Azure trace is not here")
@pytest.mark.parametrize("name", TRACE_CHOICES)
def test_every_shape_builds_sorted_arrivals_within_its_length(name: str) -> None:
    trace, length_s, described = build_trace(name, 8, True, AZURE_CSV, 0.0)
    assert trace and all(0 <= a.at_s < length_s for a in trace)
    assert [a.at_s for a in trace] == sorted(a.at_s for a in trace)
    assert (name if name != "azure" else "azure2023_conv") in described
    if name in SHAPES:
        assert length_s == pytest.approx(sum(p.duration_s for p in SHAPES[name]) / 10)


@pytest.mark.slow
def test_a_short_slice_replays_against_aif_serve(tmp_path: Path) -> None:
    trace = azure_trace(_csv(tmp_path), start_s=0.0, duration_s=3.0, seed=1)[::2]  # 2 short
    aif = Aif(tmp_path, "replay", (("AIF_LOG_LEVEL", "WARNING"),))
    try:
        model_id = register(aif.url, 1, 1)
        run = asyncio.run(replay("static", aif, model_id, trace, 3.0))
    finally:
        aif.stop()
    assert [r.ok for r in run.results] == [True, True], [r.error for r in run.results]
    assert [r.tokens for r in run.results] == [a.max_tokens for a in trace]
    result = figures(run)
    assert (result.windows_met, result.windows, result.failed) == (1, 1, 0)
    assert result.instance_s > 0


def test_the_phase_report_counts_steps_and_reversals_per_phase() -> None:
    phases = (Phase("low", 1, 40), Phase("burst", 10, 20), Phase("low", 1, 60))
    moves = [(41.5, 1, 3), (44.0, 3, 4), (70.0, 4, 3), (75.0, 3, 4), (90.0, 4, 2), (300.0, 2, 1)]
    assert phase_report(phases, moves) == [
        "low at 0s: 0 decisions, 0 reversals",
        "burst at 40s: 2 decisions, 0 reversals, first scale-up 1.5s after it began",
        # The last phase runs on to the last decision, past the trace's end.
        "low at 60s: 4 decisions, 2 reversals",
    ]
