"""The chat-job-executor's pressure reports to a task-executor-manager in another process.

When a request has to wait for a slot (every slot of its model taken), the gateway asks the
task-executor-manager for a pass over that model. In one process (``aif serve``) that is a call
(:meth:`scaler.task_executor_manager.TaskExecutorManager.nudge`); on a cluster the roles are
separate Deployments, and this reporter posts the model's name to the manager's
``POST /v1/scaler/pressure`` (``AIF_SCALER_URL``, the task-executor-manager Service). The load
itself still comes from the gateways' ``/metrics`` (or Prometheus), read fresh for the pass.

Reports are coalesced: names reported while a post is under way go in the next one, and posts
are at least ``min_gap_s`` apart (the manager runs no closer passes anyway), so a burst of
waiting requests costs a handful of posts a second. A failed post is logged once per spell of
failures and dropped: pressure is a hint, the manager's interval still decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

logger = logging.getLogger(__name__)

PRESSURE_PATH = "/v1/scaler/pressure"
POST_TIMEOUT_S = 2.0


class PressureReporter:
    """``report(name)`` from any thread once started; ``stop`` ends the posting task."""

    def __init__(self, url: str, *, min_gap_s: float, admin_key: str | None = None) -> None:
        self._url = url.rstrip("/") + PRESSURE_PATH
        self._min_gap_s = min_gap_s
        self._headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.posted = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="pressure-reports")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def report(self, model_name: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._add, model_name)

    def _add(self, model_name: str) -> None:
        self._pending.add(model_name)
        self._wake.set()

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=POST_TIMEOUT_S, trust_env=False) as client:
            while True:
                await self._wake.wait()
                self._wake.clear()
                names, self._pending = sorted(self._pending), set()
                await self._post(client, names)
                await asyncio.sleep(self._min_gap_s)

    async def _post(self, client: httpx.AsyncClient, names: list[str]) -> None:
        try:
            answer = await client.post(self._url, json={"models": names}, headers=self._headers)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            if not self._failing:
                logger.warning(
                    "cannot report pressure to %s: %s; retried on the next", self._url, exc
                )
            self._failing = True
            return
        if self._failing:
            logger.info("pressure reports reach %s again", self._url)
        self._failing = False
        self.posted += 1
