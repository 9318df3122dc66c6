"""Capacity at the SLO, measured: the concurrency one instance holds within the model's SLO.

An engine's latency grows with what it runs at once (vLLM's decode step with the batch and the
context it reads; prefills interleaved with the decodes), so it misses a TPOT or TTFT target
well below its ``max-num-seqs``, at a concurrency that depends on prompt and output lengths.
That point is learnt here, from samples of what users saw at the gateway, rather than assumed.

A :class:`CapacityCurve` keeps, per *bin* of concurrency per instance (``bin_width``
requests wide), an exponentially weighted mean of the SLO ratio seen there (the worse of p95
TTFT / target and p95 TPOT / target; above 1 misses). Samples come from the policy's passes
(:func:`observe_sample`: the mean concurrency per ready instance over the latency window, with
the window's ratio) and from a profile (:mod:`scaler.profile`: one instance stepped through
concurrencies). The curve is kept rising with concurrency: a sample drops the bins it
contradicts (misses below a concurrency that meets the SLO now, meets above one that misses), so
a miss paired with too low a concurrency (a window's mean, while load rose) does not stay to
cap the estimate once higher concurrencies are seen to meet it. The engines' own queue signals
count as misses at the concurrency they appeared at (:func:`engine_full`): requests waiting
inside the engine, or its KV cache full, mean it holds fewer than it was given.

:func:`estimate` reads the curve: between the highest bin that met the SLO and the lowest that
missed it above, the concurrency where the ratio reaches 1 (linear between the two); with only
misses, the lowest one scaled down by its ratio (a miss counts from its first sample, so a
breach moves the estimate within the pass that saw it); with only bins that met it, a line through
them extrapolated to a ratio of 1, no further than ``EXTRAPOLATE_FACTOR`` times the highest
concurrency seen (latency is not known beyond it), and never above the preset's. Pure: no
clock, no I/O; the time of a sample is the caller's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

# Weight of a new sample in its bin's mean: a few passes move it, one odd window does not.
SAMPLE_WEIGHT = 0.3
# A ratio within this of 1 still meets the SLO (p95 over a window is noisy).
TOLERANCE = 0.05
# Bins per preset capacity: 256 sequences → bins of 4, 4 sequences → bins of 1.
BINS_PER_PRESET = 64
# Extrapolation from bins that all met the SLO goes no further than this times the highest.
EXTRAPOLATE_FACTOR = 2.0
# Ratio recorded when the engines fill their KV cache at a concurrency (just over the SLO).
KV_FULL_RATIO = 1.1
# KV cache usage at which an engine starts preempting (vLLM's watermark is near full).
KV_FULL = 0.95
# Samples before bins that all met the SLO are extrapolated from (a miss counts at once).
MIN_SAMPLES = 3


@dataclass(frozen=True)
class Bin:
    # floor(concurrency / bin_width), and the weighted mean concurrency of its samples.
    index: int
    concurrency: float
    ratio: float
    samples: int


@dataclass(frozen=True)
class CapacityCurve:
    """SLO ratio by concurrency per instance, learnt; ``bins`` sorted by concurrency."""

    bin_width: float
    bins: tuple[Bin, ...] = ()
    # Generated tokens per second per instance seen with the SLO met, highest (None: unknown).
    tokens_per_s: float | None = None

    @classmethod
    def for_preset(cls, preset_capacity: int) -> CapacityCurve:
        return cls(bin_width=max(1.0, preset_capacity / BINS_PER_PRESET))

    @property
    def samples(self) -> int:
        return sum(b.samples for b in self.bins)


def observe_sample(
    curve: CapacityCurve, concurrency: float, ratio: float, tokens_per_s: float | None = None
) -> CapacityCurve:
    """The curve with one sample: ``ratio`` seen at ``concurrency`` per instance."""
    if concurrency <= 0 or not math.isfinite(ratio) or ratio < 0:
        return curve
    index = math.floor(concurrency / curve.bin_width)
    met = ratio <= 1 + TOLERANCE
    # The curve rises with concurrency: a sample contradicts the bins on its other side (a
    # miss below a concurrency that now meets the SLO, a meet above one that now misses).
    # The newer says what the engines do now, so those bins go.
    bins = {
        b.index: b
        for b in curve.bins
        if b.index == index
        or (b.ratio <= 1 + TOLERANCE) == met
        or (b.concurrency > concurrency if met else b.concurrency < concurrency)
    }
    old = bins.get(index)
    if old is None:
        bins[index] = Bin(index, concurrency, ratio, 1)
    else:
        at = old.concurrency + SAMPLE_WEIGHT * (concurrency - old.concurrency)
        mean = old.ratio + SAMPLE_WEIGHT * (ratio - old.ratio)
        bins[index] = Bin(index, at, mean, old.samples + 1)
    best = curve.tokens_per_s
    if tokens_per_s is not None and met:
        best = tokens_per_s if best is None else max(best, tokens_per_s)
    return replace(curve, bins=tuple(bins[k] for k in sorted(bins)), tokens_per_s=best)


def engine_full(
    in_flight_per_instance: float, waiting_per_instance: float | None, kv_usage: float | None
) -> tuple[float, float] | None:
    """(concurrency per instance, ratio to record) where the engines showed they hold fewer
    than they were given: requests waiting inside them (the ratio admitted / running, so the
    estimate comes to what they run), or their KV cache full; None when they showed neither."""
    if in_flight_per_instance <= 0:
        return None
    if waiting_per_instance is not None and waiting_per_instance > 0:
        running = max(in_flight_per_instance - waiting_per_instance, 1.0)
        return in_flight_per_instance, in_flight_per_instance / running
    if kv_usage is not None and kv_usage >= KV_FULL:
        return in_flight_per_instance, KV_FULL_RATIO
    return None


def estimate(curve: CapacityCurve, preset_capacity: int) -> float | None:
    """Concurrency per instance at which the SLO ratio reaches 1; None: not known yet."""
    ceiling = float(max(preset_capacity, 1))
    missed = [b for b in curve.bins if b.ratio > 1 + TOLERANCE]
    lowest_miss = missed[0] if missed else None
    met = [
        b
        for b in curve.bins
        if b.ratio <= 1 + TOLERANCE
        and (lowest_miss is None or b.concurrency < lowest_miss.concurrency)
    ]
    if lowest_miss is not None:
        if not met:
            return _clamp(lowest_miss.concurrency / lowest_miss.ratio, ceiling)
        top = met[-1]
        span = lowest_miss.ratio - top.ratio
        if span <= 0:
            return _clamp(top.concurrency, ceiling)
        at_one = (
            top.concurrency + (1 - top.ratio) * (lowest_miss.concurrency - top.concurrency) / span
        )
        return _clamp(at_one, ceiling)
    if len(met) < 2 or curve.samples < MIN_SAMPLES:
        return None
    slope, intercept = _fit(met)
    highest = met[-1].concurrency
    if slope <= 0:
        return _clamp(highest * EXTRAPOLATE_FACTOR, ceiling)
    at_one = (1 - intercept) / slope
    return _clamp(min(max(at_one, highest), highest * EXTRAPOLATE_FACTOR), ceiling)


def predicted_ratio(curve: CapacityCurve, concurrency: float) -> float | None:
    """The SLO ratio the bins that met the SLO predict at ``concurrency`` (their line, as
    :func:`estimate` extrapolates it); None with fewer than two of them."""
    met = [b for b in curve.bins if b.ratio <= 1 + TOLERANCE]
    if len(met) < 2:
        return None
    slope, intercept = _fit(met)
    return intercept + max(slope, 0.0) * concurrency


def _fit(bins: list[Bin]) -> tuple[float, float]:
    """Least squares of ratio on concurrency, each bin weighted by its samples."""
    weight = sum(b.samples for b in bins)
    mean_c = sum(b.concurrency * b.samples for b in bins) / weight
    mean_r = sum(b.ratio * b.samples for b in bins) / weight
    var = sum(b.samples * (b.concurrency - mean_c) ** 2 for b in bins)
    if var <= 0:
        return 0.0, mean_r
    cov = sum(b.samples * (b.concurrency - mean_c) * (b.ratio - mean_r) for b in bins)
    slope = cov / var
    return slope, mean_r - slope * mean_c


def _clamp(value: float, ceiling: float) -> float:
    return min(max(value, 1.0), ceiling)
