"""The threads the API's store calls run on, apart from the server's other work.

A store call blocks its thread (SQLite waits up to its busy timeout for another writer; MongoDB
for server selection). Run on the framework's shared threadpool, a stuck store would take every
thread of it and, with them, routes that never touch the store. Here those calls get a pool of
their own, bounded by ``AIF_STORE_WORKERS``: a stuck store fills this pool only, and callers
that must not wait long (``/ready``) bound their wait.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")


class StorePool:
    def __init__(self, workers: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aif-store")

    async def run(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        # Calls still waiting on the store finish on their own; nothing waits for them.
        self._executor.shutdown(wait=False, cancel_futures=True)
