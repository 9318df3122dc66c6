"""Fixtures for Pulumi programs under ``pulumi.runtime.set_mocks``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pulumi
import pytest


def _close_thread_loop() -> None:
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        return
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture
def pulumi_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A current event loop for the Pulumi runtime, and no loop left unclosed after it.

    The runtime builds futures outside a running loop, and its mock monitor opens an event
    loop in each executor thread it answers from and never closes it. One executor thread,
    whose loop is closed afterwards, keeps warnings-as-errors runs clean.
    """
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pulumi-mocks")
    loop.set_default_executor(executor)
    asyncio.set_event_loop(loop)
    # set_mocks keeps the root stack resource of the previous program: start afresh.
    pulumi.runtime.reset_options()
    try:
        yield loop
    finally:
        pulumi.runtime.reset_options()
        executor.submit(_close_thread_loop).result()
        executor.shutdown(wait=True)
        asyncio.set_event_loop(None)
        loop.close()
