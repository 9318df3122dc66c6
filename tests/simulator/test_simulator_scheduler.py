"""The simulator's scheduler and step loop on a fake clock: costs, queueing, KV budget."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import pytest

from simulator import (
    Engine,
    EngineConfig,
    FinishedSequence,
    GenerationRequest,
    Scheduler,
    Sequence,
    StepOutcome,
    TokenEvent,
    step_cost_s,
)
from simulator.kv_cache import BlockPool, PrefixCache, blocks_for
from simulator.metrics import buckets_1_2_5

CONFIG = EngineConfig(
    served_model_name="m",
    max_num_seqs=8,
    max_num_batched_tokens=512,
    max_model_len=1024,
    block_size=16,
    kv_cache_blocks=256,
    prefill_ms_per_token=0.5,
    decode_step_base_ms=10.0,
    decode_ms_per_running_seq=1.0,
)


@dataclass
class Run:
    """Drives a scheduler step by step on a fake clock, as the engine's loop does."""

    scheduler: Scheduler
    now: float = 0.0
    outcomes: list[StepOutcome] = field(default_factory=list)
    events: dict[str, list[TokenEvent]] = field(default_factory=dict)

    def add(self, name: str, prompt: int, output: int, hashes: tuple[bytes, ...] = ()) -> Sequence:
        self.events[name] = []
        sequence = Sequence(
            request_id=name,
            prompt_tokens=prompt,
            output_tokens=output,
            finish_reason="stop",
            arrival_s=self.now,
            on_token=self.events[name].append,
            block_hashes=hashes,
        )
        self.scheduler.add(sequence)
        return sequence

    def step(self) -> StepOutcome:
        plan = self.scheduler.schedule(self.now)
        self.now += plan.cost_s
        outcome = self.scheduler.complete(plan, self.now)
        self.outcomes.append(outcome)
        return outcome

    def until_idle(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if not self.scheduler.has_work():
                return
            self.step()
        raise AssertionError("the scheduler did not drain")

    def ttft(self, name: str) -> float:
        sequence = self.find(name)
        assert sequence.first_token_s is not None
        return sequence.first_token_s - sequence.arrival_s

    def find(self, name: str) -> Sequence:
        for outcome in self.outcomes:
            for work in outcome.plan.work:
                if work.sequence.request_id == name:
                    return work.sequence
        raise KeyError(name)


def run(**overrides: int | float) -> Run:
    return Run(Scheduler(replace(CONFIG, **overrides)))  # type: ignore[arg-type]


def test_step_cost_grows_with_prefill_and_batch() -> None:
    assert step_cost_s(CONFIG, 0, 0) == 0.0
    assert step_cost_s(CONFIG, 0, 8) > step_cost_s(CONFIG, 0, 1)
    assert step_cost_s(CONFIG, 400, 1) > step_cost_s(CONFIG, 10, 1)
    assert step_cost_s(CONFIG, 100, 4) == pytest.approx((0.5 * 100 + 10 + 4) / 1000)


def test_more_running_sequences_make_each_decode_step_longer() -> None:
    def decode_step_cost(concurrency: int) -> float:
        r = run()
        for i in range(concurrency):
            r.add(f"s{i}", prompt=8, output=50)
        r.step()  # the prefill step
        return r.step().plan.cost_s

    assert decode_step_cost(1) < decode_step_cost(4) < decode_step_cost(8)


def test_tokens_arrive_in_order_and_the_last_carries_the_reason() -> None:
    r = run()
    r.add("a", prompt=20, output=5)
    r.until_idle()
    assert [e.index for e in r.events["a"]] == [0, 1, 2, 3, 4]
    assert [e.finish_reason for e in r.events["a"]] == [None] * 4 + ["stop"]
    finished = [f for o in r.outcomes for f in o.finished]
    assert [(f.request_id, f.generation_tokens, f.finish_reason) for f in finished] == [
        ("a", 5, "stop")
    ]
    assert r.scheduler.pool.used_blocks == 0


def test_queueing_behind_a_full_batch_raises_time_to_first_token() -> None:
    r = run(max_num_seqs=1)
    r.add("first", prompt=32, output=10)
    r.add("second", prompt=32, output=10)
    r.step()
    assert r.scheduler.num_running == 1 and r.scheduler.num_waiting == 1
    r.until_idle()
    assert r.ttft("second") > r.ttft("first")
    queue_times = [q for o in r.outcomes for q in o.plan.queue_times_s]
    assert queue_times[0] == 0.0 and queue_times[1] > 0.0


def test_longer_prompts_take_longer_to_first_token() -> None:
    short, long = run(), run()
    short.add("a", prompt=16, output=2)
    long.add("a", prompt=400, output=2)
    short.until_idle()
    long.until_idle()
    assert long.ttft("a") > short.ttft("a")


def test_prefill_is_chunked_to_the_token_budget() -> None:
    r = run(max_num_batched_tokens=64)
    r.add("a", prompt=200, output=3)
    prefill_tokens = [r.step().plan.prefill_tokens for _ in range(4)]
    assert prefill_tokens == [64, 64, 64, 8]
    assert [o.generation_tokens for o in r.outcomes] == [0, 0, 0, 1]


def test_the_kv_budget_limits_admission() -> None:
    # 6 blocks of 16 tokens; each 40-token prompt needs ceil(41 / 16) = 3 blocks.
    r = run(kv_cache_blocks=6)
    for name in ("a", "b", "c"):
        r.add(name, prompt=40, output=4)
    r.step()
    assert r.scheduler.num_running == 2 and r.scheduler.num_waiting == 1
    assert r.scheduler.kv_cache_usage == 1.0
    r.until_idle()
    assert r.ttft("c") > r.ttft("b")
    assert len(r.events["c"]) == 4
    assert r.scheduler.pool.used_blocks == 0


def test_growing_sequences_preempt_the_newest_which_later_resumes() -> None:
    # Two sequences start in 2 blocks each; growing past 32 tokens needs a third block.
    r = run(kv_cache_blocks=5)
    r.add("old", prompt=28, output=20)
    r.add("new", prompt=28, output=20)
    r.until_idle()
    assert sum(o.plan.preemptions for o in r.outcomes) >= 1
    assert [len(r.events[name]) for name in ("old", "new")] == [20, 20]
    assert r.events["new"][-1].finish_reason == "stop"
    assert r.find("old").last_token_s < r.find("new").last_token_s  # type: ignore[operator]
    assert r.scheduler.pool.used_blocks == 0


def test_a_prefix_cache_hit_skips_prefill_and_is_counted() -> None:
    hashes = (b"h1", b"h2", b"h3")
    r = run()
    r.add("a", prompt=50, output=1, hashes=hashes)
    first = r.step()
    r.add("b", prompt=50, output=1, hashes=hashes)
    second = r.step()
    assert (first.plan.prefix_queried_tokens, first.plan.prefix_hit_tokens) == (50, 0)
    assert (second.plan.prefix_queried_tokens, second.plan.prefix_hit_tokens) == (50, 48)
    assert second.plan.prefill_tokens == 2 < first.plan.prefill_tokens
    assert second.plan.cost_s < first.plan.cost_s


def test_abort_frees_blocks_wherever_the_sequence_is() -> None:
    r = run(max_num_seqs=1)
    running = r.add("running", prompt=40, output=100)
    waiting = r.add("waiting", prompt=40, output=100)
    r.step()
    assert r.scheduler.pool.used_blocks > 0
    record = r.scheduler.abort(running, r.now)
    assert record is not None and record.finish_reason == "abort"
    assert r.scheduler.abort(waiting, r.now) is not None
    assert r.scheduler.abort(waiting, r.now) is None
    assert r.scheduler.pool.used_blocks == 0 and not r.scheduler.has_work()


def test_a_request_larger_than_the_kv_cache_is_refused() -> None:
    r = run(kv_cache_blocks=2)
    assert not r.scheduler.fits(30, 10)
    with pytest.raises(ValueError, match="never fit"):
        r.add("huge", prompt=30, output=10)


def test_kv_cache_helpers() -> None:
    assert [blocks_for(n, 16) for n in (1, 16, 17, 32)] == [1, 1, 2, 2]
    pool = BlockPool(4)
    pool.allocate(3)
    assert pool.usage == 0.75 and not pool.can_allocate(2)
    with pytest.raises(ValueError, match="cannot release"):
        pool.release(4)
    cache = PrefixCache(capacity_blocks=2)
    cache.insert([b"a", b"b", b"c"])
    assert len(cache) == 2 and cache.match([b"a"]) == 0 and cache.match([b"b", b"c"]) == 2
    assert buckets_1_2_5(100) == (1, 2, 5, 10, 20, 50, 100)


class FakeTime:
    """A clock that only moves when the engine sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_the_engine_streams_tokens_and_aborts_on_close() -> None:
    fake = FakeTime()
    engine = Engine(CONFIG, clock=fake.clock, sleep=fake.sleep)
    await engine.start()
    try:
        request = GenerationRequest("a", prompt_tokens=20, output_tokens=3, finish_reason="length")
        async with engine.generate(request) as generation:
            events = [event async for event in generation]
        assert [(e.index, e.finish_reason) for e in events] == [(0, None), (1, None), (2, "length")]
        assert fake.sleeps[0] > fake.sleeps[1]  # the prefill step is the longer one

        long = GenerationRequest("b", prompt_tokens=20, output_tokens=500, finish_reason="stop")
        async with engine.generate(long) as generation:
            async for event in generation:
                if event.index == 1:
                    break
        assert engine.scheduler.pool.used_blocks == 0 and not engine.scheduler.has_work()
    finally:
        await engine.stop()
    assert not engine.running


async def test_stopping_the_engine_ends_open_requests() -> None:
    fake = FakeTime()
    engine = Engine(replace(CONFIG, max_num_seqs=1), clock=fake.clock, sleep=fake.sleep)
    await engine.start()
    first = engine.generate(GenerationRequest("a", 10, 1000, "stop"))
    second = engine.generate(GenerationRequest("b", 10, 1000, "stop"))
    assert (await anext(first)).index == 0
    await engine.stop()
    assert [e.finish_reason async for e in second] == ["abort"]
    assert [e.finish_reason async for e in first][-1] == "abort"


class BrokenRecorder:
    def record_step(self, outcome: StepOutcome) -> None:
        raise RuntimeError("recorder broke")

    def record_finished(self, finished: FinishedSequence) -> None:
        pass


async def test_a_failed_step_loop_ends_open_requests(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    engine = Engine(CONFIG, BrokenRecorder(), clock=fake.clock, sleep=fake.sleep)
    await engine.start()
    generation = engine.generate(GenerationRequest("a", 10, 5, "stop"))
    assert [e.finish_reason async for e in generation][-1] == "abort"
    assert not engine.running
    assert "step loop failed" in caplog.text
    await engine.stop()
