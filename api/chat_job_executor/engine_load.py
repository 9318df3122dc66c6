"""What engines report of their own load, for the ``load`` routing policy.

Every :data:`POLL_INTERVAL_S`, each instance of a model routed by load is asked for its
``/metrics``; vLLM's (and the simulator's) queue length, running sequences and KV cache usage
are kept on the instance (:class:`~.routing.Instance`). An engine that has no ``/metrics``
(llama.cpp's server) is noted once and not asked again; it is then routed by what is in
flight here alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from api.chat_job_executor.routing import Instance, Route

logger = logging.getLogger(__name__)

# Fresh enough to follow a burst, rare enough to cost an engine nothing.
POLL_INTERVAL_S = 1.0
SCRAPE_TIMEOUT_S = 2.0
WAITING = ("vllm:num_requests_waiting",)
RUNNING = ("vllm:num_requests_running",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def read_load(text: str) -> dict[str, float]:
    """The load gauges in a Prometheus text scrape, summed over their series."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def _first(values: dict[str, float], names: tuple[str, ...]) -> float:
    return next((values[name] for name in names if name in values), 0.0)


class EngineLoadPoller:
    """Keeps each load-routed instance's engine figures fresh."""

    def __init__(self, routes: Callable[[], Iterable[Route]]) -> None:
        self._routes = routes
        self._without_metrics: set[str] = set()

    async def run(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            instances = [
                instance
                for route in self._routes()
                if route.policy == "load"
                for instance in route.instances
                if instance.url not in self._without_metrics
            ]
            if instances:
                await asyncio.gather(*(self._poll(session(), i) for i in instances))

    async def _poll(self, session: aiohttp.ClientSession, instance: Instance) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
            async with session.get(instance.url + "/metrics", timeout=timeout) as response:
                if response.status == 404:
                    self._without_metrics.add(instance.url)
                    logger.info(
                        "instance exports no /metrics; routing it by in-flight requests alone "
                        "model=%s instance=%s", instance.model_name, instance.instance_id,
                    )  # fmt: skip
                    return
                text = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.debug("load poll failed instance=%s error=%r", instance.instance_id, exc)
            return
        values = read_load(text)
        instance.engine_waiting = _first(values, WAITING)
        instance.engine_running = _first(values, RUNNING)
        instance.kv_usage = _first(values, KV_USAGE)
