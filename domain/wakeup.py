"""A wake-up call for a background loop that any thread may give.

The frontend's routes run in worker threads and the executor writes the store from worker
threads, yet the loops they wake (the model-job-executor's, the gateway's refresh) wait on the
event loop. ``asyncio.Event`` is not thread-safe, so :class:`Wakeup` hands a set from another
thread to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib


class Wakeup:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> None:
        """Attach to the running loop; call from the loop that will wait."""
        self._loop = asyncio.get_running_loop()

    def set(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._event.set()
        else:
            loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout_s: float) -> None:
        """Until woken or ``timeout_s`` passes, whichever is first; then ready for the next."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set, and the loop being stopped would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._event.wait()
        self._event.clear()
