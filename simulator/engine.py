"""The simulated engine's step loop: the scheduler driven in (simulated) real time.

:class:`Engine` owns a :class:`~simulator.scheduler.Scheduler` and one asyncio task
that repeats: plan a step, sleep for the step's cost, apply it (which delivers that step's
tokens to their requests at once), record the outcome. With nothing queued it awaits an event
instead of polling. A request enters through :meth:`Engine.generate` and is read as an async
iterator of :class:`~simulator.sequence.TokenEvent`; leaving it early (the client
went away) aborts the sequence and frees its KV blocks. The clock and the sleep are injected,
so tests can run the loop on fake time. HTTP is left to :mod:`simulator.server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from simulator.config import EngineConfig
from simulator.scheduler import Scheduler, StepOutcome
from simulator.sequence import FinishedSequence, FinishReason, Sequence, TokenEvent

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class StepRecorder(Protocol):
    """Where the engine reports what happened (:class:`~.metrics.EngineMetrics`)."""

    def record_step(self, outcome: StepOutcome) -> None: ...

    def record_finished(self, finished: FinishedSequence) -> None: ...


class _NoRecorder:
    def record_step(self, outcome: StepOutcome) -> None:
        pass

    def record_finished(self, finished: FinishedSequence) -> None:
        pass


class EngineStopped(Exception):
    """The engine's step loop is not running, so a request cannot be served."""


@dataclass(frozen=True)
class GenerationRequest:
    """What the engine needs of a request: its size and how it ends."""

    request_id: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: FinishReason
    block_hashes: tuple[bytes, ...] = ()


class Generation:
    """The tokens of one submitted request, as the step loop produces them.

    Iterate it for :class:`TokenEvent` values (the last carries the finish reason; an
    ``"abort"`` one, sent when the engine stops under it, carries no token). Use it as an
    async context manager, or call :meth:`close`, so that leaving early aborts it.
    """

    def __init__(self, engine: Engine, sequence: Sequence, events: asyncio.Queue[TokenEvent]):
        self._engine = engine
        self.sequence = sequence
        self._events = events
        self._done = False

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._events.get()
        if event.finish_reason is not None:
            self._done = True
        return event

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Abort the request unless it has finished; safe to call more than once."""
        self._done = True
        self._engine.abort(self.sequence)


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        recorder: StepRecorder | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.scheduler = Scheduler(config)
        self._recorder: StepRecorder = recorder if recorder is not None else _NoRecorder()
        self._clock = clock
        self._sleep = sleep
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._task = asyncio.create_task(self._run(), name="simulator-step-loop")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._end_all()

    def fits(self, prompt_tokens: int, output_tokens: int) -> bool:
        return self.scheduler.fits(prompt_tokens, output_tokens)

    def generate(self, request: GenerationRequest) -> Generation:
        if not self.running:
            raise EngineStopped("the engine's step loop is not running")
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        sequence = Sequence(
            request_id=request.request_id,
            prompt_tokens=request.prompt_tokens,
            output_tokens=request.output_tokens,
            finish_reason=request.finish_reason,
            arrival_s=self._clock(),
            on_token=events.put_nowait,
            block_hashes=request.block_hashes,
        )
        self.scheduler.add(sequence)
        self._wakeup.set()
        return Generation(self, sequence, events)

    def abort(self, sequence: Sequence) -> None:
        finished = self.scheduler.abort(sequence, self._clock())
        if finished is not None:
            logger.debug("aborted %s after %d tokens", sequence.request_id, sequence.generated)
            self._recorder.record_finished(finished)

    def _end_all(self) -> None:
        """Abort every sequence and tell its reader, with an event that carries no token."""
        for sequence in [*self.scheduler.running, *self.scheduler.waiting]:
            self.abort(sequence)
            sequence.on_token(TokenEvent(sequence.generated, "abort"))

    async def _run(self) -> None:
        try:
            while True:
                await self._step()
        except Exception:
            # Without the loop no request can make progress: end the open ones; health and
            # new requests report the engine as down from here on.
            logger.exception("the simulator's step loop failed")
            self._end_all()

    async def _step(self) -> None:
        if not self.scheduler.has_work():
            self._wakeup.clear()
            await self._wakeup.wait()
            return
        plan = self.scheduler.schedule(self._clock())
        if plan.empty:
            # Preemption can leave a plan empty, and it freed the memory the head of the queue
            # needs: plan again at once. In fixed-TTFT mode the head may not be due yet: wait.
            self._recorder.record_step(self.scheduler.complete(plan, self._clock()))
            delay_s = self.scheduler.admission_delay_s(self._clock())
            await (self._sleep(delay_s) if delay_s > 0 else asyncio.sleep(0))
            return
        await self._sleep(plan.cost_s)
        outcome = self.scheduler.complete(plan, self._clock())
        self._recorder.record_step(outcome)
