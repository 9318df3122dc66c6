"""Counting each answered request's tokens per key, model and hour, and writing them in batches.

:meth:`UsageRecorder.record` is on the inference hot path: it adds to a dict in memory, with no
await and no store write. Every ``AIF_USAGE_FLUSH_S`` a background task hands what accumulated
to the store's :meth:`~domain.store.ModelStore.add_usage` in one call, on a worker thread; a
failed write keeps the counts for the next flush (logged once per run of failures), and
stopping writes what is left. So ``GET /v1/usage`` lags by up to the flush interval, and a
crash loses at most one interval of this process's counts.

The same counts go to Prometheus as they are recorded: ``aif_tokens_total{model,kind}``, and
per key when ``AIF_METRICS_PER_KEY`` asks for it. Only the process that serves a request
records it (the chat-job-executor, not a frontend forwarding to one: see :mod:`api.app`).
Reports over the stored buckets are :mod:`api.services.usage`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from domain.store import ModelStore
from domain.usage import SECONDS_PER_HOUR, UsageBucket, hour_at

logger = logging.getLogger(__name__)

# (key id, model, hour as whole hours since the epoch)
Slot = tuple[str, str, int]


class UsageMetrics:
    """Tokens (and, per key, requests) as Prometheus counters in ``registry``."""

    def __init__(self, registry: CollectorRegistry, *, per_key: bool) -> None:
        self.tokens = Counter(
            "aif_tokens", "Tokens of answered requests, by model and kind (prompt, completion).",
            ["model", "kind"], registry=registry,
        )  # fmt: skip
        self.key_tokens: Counter | None = None
        self.key_requests: Counter | None = None
        if per_key:
            self.key_tokens = Counter(
                "aif_key_tokens", "Tokens of answered requests, by key, model and kind.",
                ["key", "model", "kind"], registry=registry,
            )  # fmt: skip
            self.key_requests = Counter(
                "aif_key_requests", "Answered requests, by key and model.", ["key", "model"],
                registry=registry,
            )  # fmt: skip

    def count(self, key_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)
        if self.key_tokens is not None and self.key_requests is not None:
            self.key_tokens.labels(key_id, model, "prompt").inc(prompt_tokens)
            self.key_tokens.labels(key_id, model, "completion").inc(completion_tokens)
            self.key_requests.labels(key_id, model).inc()


class UsageRecorder:
    """This process's usage since the last flush, and the task that flushes it (see module)."""

    def __init__(
        self,
        store: ModelStore,
        *,
        flush_s: float,
        metrics: UsageMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._flush_s = flush_s
        self._metrics = metrics
        self._clock = clock
        # [requests, prompt tokens, completion tokens] per slot, not yet in the store.
        self._pending: dict[Slot, list[int]] = {}
        self._failing = False
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(self, key_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one answered request (the hot path: memory only)."""
        slot = (key_id, model, int(self._clock() // SECONDS_PER_HOUR))
        counts = self._pending.get(slot)
        if counts is None:
            self._pending[slot] = [1, prompt_tokens, completion_tokens]
        else:
            counts[0] += 1
            counts[1] += prompt_tokens
            counts[2] += completion_tokens
        if self._metrics is not None:
            self._metrics.count(key_id, model, prompt_tokens, completion_tokens)

    async def flush(self) -> bool:
        """Write what accumulated; whether the store took it (if not, it is kept)."""
        if not self._pending:
            return True
        # Taken before the await: what is recorded meanwhile goes to the next flush.
        pending, self._pending = self._pending, {}
        buckets = [
            UsageBucket(
                key_id=key_id, model=model, hour=hour_at(hour * SECONDS_PER_HOUR),
                requests=requests, prompt_tokens=prompt, completion_tokens=completion,
            )
            for (key_id, model, hour), (requests, prompt, completion) in pending.items()
        ]  # fmt: skip
        try:
            await asyncio.to_thread(self._store.add_usage, buckets)
        except Exception:
            self._keep(pending)
            if not self._failing:
                logger.warning(
                    "usage not written to the store; kept for the next flush buckets=%d",
                    len(buckets), exc_info=True,
                )  # fmt: skip
            self._failing = True
            return False
        if self._failing:
            logger.info("usage written to the store again buckets=%d", len(buckets))
        self._failing = False
        return True

    def _keep(self, pending: dict[Slot, list[int]]) -> None:
        for slot, counts in pending.items():
            kept = self._pending.setdefault(slot, [0, 0, 0])
            for index, value in enumerate(counts):
                kept[index] += value

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="usage-flush")

    async def stop(self) -> None:
        # The loop is asked to end, not cancelled: a flush it is making completes first.
        self._stopping.set()
        if self._task is not None:
            await self._task
        if not await self.flush():
            requests = sum(counts[0] for counts in self._pending.values())
            logger.error("usage lost at stop: the store did not take it requests=%d", requests)

    async def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._flush_s)
                return
            await self.flush()
