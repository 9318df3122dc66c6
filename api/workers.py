"""Chat workers: more processes serving the same port, so the chat path uses more than one core.

With ``AIF_CHAT_WORKERS=N`` (or ``--chat-workers N``) the command's process binds its port N
times with ``SO_REUSEPORT`` and, once its roles have started, starts N-1 worker processes
(``aif chat-worker``), each inheriting one of those sockets: the kernel spreads new connections
over them by a hash of the client's address and port (one shared socket would let whichever
process wakes first take nearly all of them). A worker's socket closes with it, and the kernel
then spreads over the others.
A worker runs the frontend and the chat-job-executor (or the chat-job-executor alone, under
``aif chat-job-executor``) against the same store; the model-job-executor and the
task-executor-manager stay in the command's process, once.

Routing state is each process's own, kept right as follows:

* the routing table is read from the shared store, every ``AIF_ROUTING_REFRESH_S`` and on a
  miss, so a model that becomes ready routes in every worker within that interval;
* requests in flight (least-outstanding) and outlier ejection are counted per process over the
  1/N share of the traffic it sees; an instance failing for one worker fails for all soon;
* admission: each process admits ``ceil(capacity / N)`` of every instance's capacity, so
  together they admit what the instances take (see :class:`api.chat_job_executor.ChatJobExecutor`);
* metrics: each process also listens on a loopback port of its own, which
  ``/discovery/prometheus`` lists (a scrape of the shared port would reach any one of them);
  the task-executor-manager adds every worker's ``/metrics`` to its own process's figures.

Workers die with the command's process: on a normal stop they get SIGTERM (then SIGKILL after
a grace period); if it is killed outright, the kernel kills them (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field

from api.deployers._processes import die_with_parent_hook, terminate
from domain.settings import Settings

logger = logging.getLogger(__name__)

# As uvicorn's own listening sockets.
BACKLOG = 2048
# How often the command's process looks for a worker that died.
WATCH_S = 1.0


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket that child processes can inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class Listeners:
    """Per process (this one's first): its socket on the shared port, and its own loopback
    port."""

    shared: list[socket.socket]
    own: list[socket.socket]
    urls: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.urls = [_url(sock) for sock in self.own]

    @classmethod
    def bind(cls, settings: Settings) -> Listeners:
        shared: list[socket.socket] = []
        try:
            for _ in range(settings.chat_workers):
                shared.append(bind(settings.host, settings.port, reuse_port=True))
            own = [bind("127.0.0.1", 0) for _ in range(settings.chat_workers)]
        except OSError:
            for sock in shared:
                sock.close()
            raise
        return cls(shared, own)

    def this_process(self) -> list[socket.socket]:
        return [self.shared[0], self.own[0]]

    def close(self) -> None:
        for sock in (*self.shared, *self.own):
            sock.close()


class ChatWorkers:
    """The worker processes of one command; ``start``/``stop`` as a role's."""

    def __init__(self, listeners: Listeners, settings: Settings, *, chat_only: bool) -> None:
        self._listeners = listeners
        self._settings = settings
        self._chat_only = chat_only
        self._processes: list[subprocess.Popen[bytes]] = []
        self._watch: asyncio.Task[None] | None = None

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def _argv(self, sockets: tuple[socket.socket, ...]) -> list[str]:
        fds = [arg for sock in sockets for arg in ("--fd", str(sock.fileno()))]
        argv = [sys.executable, "-m", "api.cli", "chat-worker", *fds,
                "--gateways", ",".join(self._listeners.urls)]  # fmt: skip
        return [*argv, "--chat-only"] if self._chat_only else argv

    async def start(self) -> None:
        # What the command line set reaches the workers as the settings it stands for.
        env = {
            **os.environ,
            "AIF_DATA_DIR": str(self._settings.data_dir),
            "AIF_CHAT_WORKERS": str(self._settings.chat_workers),
            "AIF_LOG_LEVEL": self._settings.log_level,
        }
        listeners = self._listeners
        for sockets in zip(listeners.shared[1:], listeners.own[1:], strict=True):
            self._processes.append(self._spawn(sockets, env))
            # The worker's own now: a socket nobody accepts on must not stay open here.
            for sock in sockets:
                sock.close()
        logger.info("chat workers started pids=%s own=%s", self.pids, self._listeners.urls)
        self._watch = asyncio.create_task(self._watch_exits(), name="chat-workers-watch")

    async def _watch_exits(self) -> None:
        """Say so when a worker dies: the kernel spreads connections over the others, and the
        command's restart brings it back (a worker is not restarted on its own)."""
        reported: set[int] = set()
        while True:
            await asyncio.sleep(WATCH_S)
            for process in self._processes:
                if process.poll() is not None and process.pid not in reported:
                    reported.add(process.pid)
                    logger.error(
                        "chat worker exited pid=%d code=%s; the others serve the port",
                        process.pid, process.returncode,
                    )  # fmt: skip

    def _spawn(
        self, sockets: tuple[socket.socket, ...], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        # On the event loop's thread, which lives as long as this process: PR_SET_PDEATHSIG
        # fires when the thread that started the child ends.
        return subprocess.Popen(
            self._argv(sockets),
            stdin=subprocess.DEVNULL,
            env=env,
            pass_fds=tuple(sock.fileno() for sock in sockets),
            preexec_fn=die_with_parent_hook(),
        )

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

        async def stop_one(process: subprocess.Popen[bytes]) -> None:
            if not await terminate(process.pid, lambda: process.poll() is not None):
                logger.warning("chat worker did not exit pid=%d", process.pid)

        await asyncio.gather(*(stop_one(p) for p in self._processes))
        self._processes.clear()
