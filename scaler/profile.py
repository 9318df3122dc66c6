"""A short profile of a model's serving instances: the concurrency one holds within the SLO.

Where the gateway has no samples yet (a model just registered), its capacity at the SLO is
measured by load: ``levels`` of concurrency, each held for ``step_s`` by that many closed-loop
streaming clients (chat completions of ``prompt_tokens`` words and ``output_tokens`` tokens,
``ignore_eos`` so every answer is as long, as vLLM and the simulator both take it), from one
request at once and doubling until the SLO is missed (p95 TTFT or p95 TPOT over its target),
then one level between the last met and the first missed. Each level is a sample of
:mod:`scaler.capacity`'s curve at ``concurrency / instances``; its estimate is the profile's
result. The same against an engine directly (one instance) or through the gateway (its
instances share the load).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from domain.records import Capacity, utc_now
from scaler.capacity import TOLERANCE, CapacityCurve, estimate, observe_sample

# Azure's conversation trace (2023): median prompt ~1,020 tokens, median output ~130.
DEFAULT_PROMPT_TOKENS = 1000
DEFAULT_OUTPUT_TOKENS = 128
DEFAULT_STEP_S = 10.0
# A request of a level still running this long past the level's end is cut (and counts).
REQUEST_TIMEOUT_S = 120.0
# Three-letter words (four characters with the space: one token as the simulator counts, and
# in real tokenizers), drawn afresh per request so no prompt hits another's prefix cache.
PROMPT_WORDS = ("the", "and", "for", "are", "not", "but", "all", "any", "can", "had", "one")


@dataclass(frozen=True)
class ProfileTarget:
    url: str  # the gateway's or an engine's base URL (no /v1)
    model: str  # the name it serves the model under
    instances: int  # ready instances behind the URL
    preset_capacity: int  # the engine's max-num-seqs
    ttft_target_ms: float
    tpot_target_ms: float
    api_key: str | None = None


@dataclass
class Level:
    concurrency: int
    ttft_p95_ms: float | None = None
    tpot_p95_ms: float | None = None
    answered: int = 0
    failed: int = 0
    tokens_per_s: float = 0.0

    def ratio(self, target: ProfileTarget) -> float:
        if self.failed or self.ttft_p95_ms is None:
            return math.inf
        tpot = (self.tpot_p95_ms or 0.0) / target.tpot_target_ms
        return max(self.ttft_p95_ms / target.ttft_target_ms, tpot)


@dataclass
class Profile:
    levels: list[Level] = field(default_factory=list)
    capacity: Capacity = field(default_factory=Capacity)


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


async def _stream(client: httpx.AsyncClient, target: ProfileTarget, body: dict[str, object]) -> (
    tuple[float, float | None, int] | None
):  # fmt: skip
    """(TTFT s, TPOT s or None, tokens) of one streamed answer; None when it failed."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with client.stream("POST", f"{target.url}/v1/chat/completions", json=body) as answer:
        if answer.status_code != 200:
            await answer.aread()
            return None
        async for line in answer.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                tokens += 1
                first = time.perf_counter() if first is None else first
    if first is None:
        return None
    ended = time.perf_counter()
    tpot = (ended - first) / (tokens - 1) if tokens > 1 else None
    return first - started, tpot, tokens


async def run_level(
    client: httpx.AsyncClient, target: ProfileTarget, concurrency: int, step_s: float,
    prompt_tokens: int, output_tokens: int,
) -> Level:  # fmt: skip
    """``concurrency`` closed-loop clients for ``step_s``; the answers started within it."""
    rng = random.Random(concurrency)

    def body() -> dict[str, object]:
        words = " ".join(rng.choice(PROMPT_WORDS) for _ in range(prompt_tokens))
        return {
            "model": target.model,
            "messages": [{"role": "user", "content": words}],
            "max_tokens": output_tokens,
            "ignore_eos": True,
            "stream": True,
        }

    level = Level(concurrency)
    ttfts: list[float] = []
    tpots: list[float] = []
    tokens = 0
    loop = asyncio.get_running_loop()
    began = loop.time()
    ends = began + step_s

    async def client_loop() -> None:
        nonlocal tokens
        while loop.time() < ends:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    result = await _stream(client, target, body())
            except (httpx.HTTPError, TimeoutError, ValueError):
                result = None
            if result is None:
                level.failed += 1
                continue
            ttfts.append(result[0] * 1000)
            if result[1] is not None:
                tpots.append(result[1] * 1000)
            tokens += result[2]
            level.answered += 1

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    level.ttft_p95_ms, level.tpot_p95_ms = _p95(ttfts), _p95(tpots)
    level.tokens_per_s = tokens / max(loop.time() - began, 1e-9)
    return level


def next_level(levels: list[Level], target: ProfileTarget) -> int | None:
    """The concurrency to try next: doubling while the SLO is met, then one between the last
    met and the first missed; None when the profile is done."""
    ceiling = target.preset_capacity * target.instances
    if not levels:
        return 1
    met = [lv.concurrency for lv in levels if lv.ratio(target) <= 1 + TOLERANCE]
    missed = [lv.concurrency for lv in levels if lv.ratio(target) > 1 + TOLERANCE]
    if not missed:
        highest = max(met)
        return None if highest >= ceiling else min(highest * 2, ceiling)
    below = max((c for c in met if c < min(missed)), default=0)
    middle = (below + min(missed)) // 2
    tried = {lv.concurrency for lv in levels}
    return None if middle <= below or middle in tried or len(missed) > 1 else middle


async def profile(
    target: ProfileTarget, *, step_s: float = DEFAULT_STEP_S,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS, output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    report: Callable[[Level], None] = lambda level: None,
) -> Profile:  # fmt: skip
    """Step the model through concurrencies; its capacity at the SLO per instance."""
    result = Profile()
    curve = CapacityCurve.for_preset(target.preset_capacity)
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        timeout=REQUEST_TIMEOUT_S, limits=limits, headers=headers, trust_env=False
    ) as client:
        while (concurrency := next_level(result.levels, target)) is not None:
            level = await run_level(
                client, target, concurrency, step_s, prompt_tokens, output_tokens
            )
            result.levels.append(level)
            report(level)
            ratio = level.ratio(target)
            per_instance = concurrency / target.instances
            tokens = level.tokens_per_s / target.instances
            curve = observe_sample(curve, per_instance, min(ratio, 10.0), tokens)
    found = estimate(curve, target.preset_capacity)
    if found is None:  # every level met the SLO up to the engines' own limit
        met = all(lv.ratio(target) <= 1 + TOLERANCE for lv in result.levels)
        found = float(target.preset_capacity) if met else 1.0
    result.capacity = Capacity(
        concurrency_per_instance=round(found, 2),
        tokens_per_s=None if curve.tokens_per_s is None else round(curve.tokens_per_s, 1),
        source="profile",
        samples=len(result.levels),
        measured_at=utc_now(),
    )
    return result
