"""The simulator's fixed-latency mode: TTFT and inter-token latency whatever the batch."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from domain.presets import load_presets
from simulator import Engine, EngineConfig, GenerationRequest, step_cost_s
from simulator.__main__ import parse_args
from tests.simulator.test_simulator_scheduler import CONFIG, FakeTime

# No prefill cost: with it, admitting many prompts in one step lengthens that step.
FIXED = replace(
    CONFIG, max_num_seqs=64, fixed_ttft_ms=50.0, fixed_itl_ms=10.0, prefill_ms_per_token=0.0
)


def test_a_fixed_step_costs_the_same_whatever_the_batch() -> None:
    assert step_cost_s(FIXED, 0, 1) == step_cost_s(FIXED, 0, 64) == pytest.approx(0.010)
    # Uncached prefill still costs, so a warm prefix cache still pays off.
    prefilling = replace(FIXED, prefill_ms_per_token=0.5)
    assert step_cost_s(prefilling, 100, 1) == pytest.approx((0.5 * 100 + 10) / 1000)


def test_negative_fixed_latencies_are_refused() -> None:
    with pytest.raises(ValueError, match="fixed_itl_ms"):
        replace(CONFIG, fixed_itl_ms=-1.0)


async def _timings(config: EngineConfig, streams: int) -> list[tuple[float, float]]:
    """(TTFT, mean inter-token latency) of ``streams`` requests arriving together, on fake
    time, as the engine stamped them."""
    fake = FakeTime()
    engine = Engine(config, clock=fake.clock, sleep=fake.sleep)
    await engine.start()

    async def one(i: int) -> tuple[float, float]:
        request = GenerationRequest(f"r{i}", prompt_tokens=1, output_tokens=8, finish_reason="stop")
        async with engine.generate(request) as generation:
            assert len([event async for event in generation]) == 8
        sequence = generation.sequence
        assert sequence.first_token_s is not None and sequence.last_token_s is not None
        itl = (sequence.last_token_s - sequence.first_token_s) / 7
        return sequence.first_token_s - sequence.arrival_s, itl

    try:
        return await asyncio.gather(*(one(i) for i in range(streams)))
    finally:
        await engine.stop()


@pytest.mark.parametrize("streams", [1, 64])
async def test_ttft_and_itl_are_fixed_whatever_the_batch(streams: int) -> None:
    for ttft, itl in await _timings(FIXED, streams):
        assert ttft == pytest.approx(0.050)
        assert itl == pytest.approx(0.010)


async def test_without_the_fixed_mode_a_batch_slows_every_step() -> None:
    (_, alone), *_ = await _timings(replace(CONFIG, max_num_seqs=64), 1)
    (_, batched), *_ = await _timings(replace(CONFIG, max_num_seqs=64), 64)
    assert batched > alone


def test_the_command_line_sets_the_fixed_mode() -> None:
    base = ["--port", "8000", "--served-model-name", "m", "--model-type",
            "DeepSeek-R1-Distill-Qwen-7B"]  # fmt: skip
    args = parse_args(
        [*base, "--fixed-ttft-ms", "50", "--fixed-itl-ms", "10", "--prefill-ms-per-token", "0"]
    )
    assert (args.fixed_ttft_ms, args.fixed_itl_ms, args.prefill_ms_per_token) == (50, 10, 0)
    assert parse_args(base).fixed_itl_ms is None
    with pytest.raises(SystemExit):
        parse_args([*base, "--fixed-ttft-ms", "50"])
    with pytest.raises(SystemExit):
        parse_args([*base, "--fixed-itl-ms", "-1"])


def test_the_command_line_sizes_the_kv_cache() -> None:
    base = ["--port", "8000", "--served-model-name", "m", "--model-type",
            "DeepSeek-R1-Distill-Qwen-7B"]  # fmt: skip
    assert parse_args([*base, "--kv-cache-blocks", "512"]).kv_cache_blocks == 512
    with pytest.raises(SystemExit):
        parse_args([*base, "--kv-cache-blocks", "0"])
    preset = load_presets()["DeepSeek-R1-Distill-Qwen-7B"]
    assert EngineConfig.from_preset(preset, "m", kv_cache_blocks=512).kv_cache_blocks == 512
    default = EngineConfig.from_preset(preset, "m").kv_cache_blocks
    assert default == preset.simulator.kv_cache_blocks
