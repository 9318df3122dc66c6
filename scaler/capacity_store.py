"""A model's measured capacity kept with it in the store (``scaling.capacity``).

The task-executor-manager learns the concurrency one instance holds within the SLO
(:mod:`scaler.capacity`) on every pass; it writes the figure to the model's record when it
moved by more than ``CHANGE_FRACTION`` since the stored one, at most once per
``WRITE_GAP_S`` (and with every scaling decision), so ``GET /v1/models/{id}`` shows it and a
restarted manager, or another replica of it, starts from it instead of from ``max-num-seqs``.

Where a model has no figure yet, one measured for another model of the same preset on the
same resource type (the same engine on the same accelerator) stands in, marked ``preset``.
"""

from __future__ import annotations

import statistics

from domain.records import Capacity, ModelRecord, utc_now
from scaler.policy import ScalingState

# A learnt figure this far from the stored one is worth a write.
CHANGE_FRACTION = 0.05
# No more than one capacity-only write per model this often (a store write per pass is waste).
WRITE_GAP_S = 10.0


def known_capacity(record: ModelRecord, records: list[ModelRecord]) -> float | None:
    """The model's stored capacity, else the median of its preset's on its resource type."""
    own = record.scaling.capacity.concurrency_per_instance
    if own is not None:
        return own
    peers = [
        figure
        for other in records
        if other.id != record.id
        and other.type == record.type
        and other.resource_type == record.resource_type
        and other.scaling.capacity.source in {"learnt", "profile"}
        and (figure := other.scaling.capacity.concurrency_per_instance) is not None
    ]
    return statistics.median(peers) if peers else None


def learnt_capacity(state: ScalingState, stored: Capacity) -> Capacity:
    """What to store: the state's learnt figure when it has one, else what was stored."""
    curve = state.curve
    if state.capacity_estimate is None or curve is None or curve.samples == 0:
        return stored
    if stored.source == "profile" and curve.samples < 3 * stored.samples:
        return stored  # a profile's steps outweigh the first few passes
    return Capacity(
        concurrency_per_instance=round(state.capacity_estimate, 2),
        tokens_per_s=None if curve.tokens_per_s is None else round(curve.tokens_per_s, 1),
        source="learnt",
        samples=curve.samples,
        measured_at=utc_now(),
    )


class CapacityWrites:
    """When a model's learnt capacity is due to be written (changed enough, not too often)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def due(self, record: ModelRecord, state: ScalingState, now: float) -> bool:
        if now - self._last.get(record.id, float("-inf")) < WRITE_GAP_S:
            return False
        learnt = learnt_capacity(state, record.scaling.capacity).concurrency_per_instance
        stored = record.scaling.capacity.concurrency_per_instance
        if learnt is None or learnt == stored:
            return False
        return stored is None or abs(learnt - stored) > CHANGE_FRACTION * stored

    def wrote(self, model_id: str, now: float) -> None:
        self._last[model_id] = now
