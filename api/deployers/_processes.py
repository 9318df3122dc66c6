"""Engine processes and their files, for :mod:`api.deployers.local`.

- :func:`spawn` starts an engine in a session of its own, output to a log file and, on Linux,
  with ``PR_SET_PDEATHSIG=SIGKILL`` so the kernel kills it when aif dies.
- :func:`terminate` stops one: SIGTERM to its process group, SIGKILL after a grace period.
- :func:`orphan` reads an instance record (``<instance_id>.json``) and returns the engine it
  names if that engine's aif is gone and it still runs, recognised by pid, create_time and
  command line so a reused pid never matches; records of dead engines are deleted.
- :func:`write_json`, :func:`log_tail`, :func:`prune_logs` and :func:`delete_logs` handle the
  record and log files under ``<data_dir>/engines/<model_id>/``.

Left to :mod:`api.deployers.local`: which engines to run, start, stop or replace and when, the
record's content, health probes, ports, and the deployment state reported from all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # SIGTERM to SIGKILL: time for an engine to finish its responses and exit
KILL_WAIT_S = 2.0  # after SIGKILL only an engine stuck in the kernel takes longer
POLL_S = 0.05  # how often a stop checks whether the engine has gone
CREATE_TIME_TOLERANCE_S = 0.05  # psutil start times are in clock ticks (10 ms)
LOG_TAIL_BYTES = 2000  # enough for a traceback's last frames in a status message
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def log_event(level: int, event: str, **fields: object) -> None:
    """One structured line per decision: ``event key=value ...``; fields also go in ``extra``."""
    text = " ".join(f"{key}={value!r}" for key, value in fields.items())
    logger.log(level, "%s %s", event, text, extra={"event": event, "fields": fields}, stacklevel=2)


def spawn(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Deliberately synchronous and on the calling (event-loop) thread: PR_SET_PDEATHSIG fires
    # when the forking thread exits, so a short-lived executor thread would kill the engine.
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent_hook(),
        )


@functools.cache
def _prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        logger.warning("prctl unavailable: engines will not die with aif on kill -9")
        return None


def die_with_parent_hook() -> Callable[[], None] | None:
    prctl = _prctl()  # looked up before fork: the child must not load libraries
    if prctl is None:
        return None
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the request took effect
            os._exit(1)

    return hook


async def terminate(pid: int, gone: Callable[[], bool]) -> bool:
    """SIGTERM the engine's process group, SIGKILL after a grace period; True once ``gone``."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, KILL_WAIT_S)):
        if gone():
            return True
        with contextlib.suppress(ProcessLookupError):
            # Engines lead their own group (start_new_session): the group takes their children.
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        for _ in range(round(wait_s / POLL_S)):
            if gone():
                return True
            await asyncio.sleep(POLL_S)
    return gone()


def orphan(path: Path) -> psutil.Process | None:
    """The engine of the record at ``path`` if its owner is dead and it still runs.

    Records of dead engines (and unreadable ones) are deleted; records a live aif process owns
    are left alone.
    """
    record = _read_record(path)
    if record is not None and _same_process(record["owner_pid"], record["owner_create_time"]):
        return None  # a live aif process owns this engine
    engine = None if record is None else _same_process(record["pid"], record["create_time"])
    if engine is None or record is None or _cmdline(engine) != record["argv"]:
        forget(path)
        return None
    log_event(logging.WARNING, "engine stop", model_id=record["model_id"],
              instance_id=record["instance_id"], pid=engine.pid, reason="orphan of a dead aif",
              owner_pid=record["owner_pid"])  # fmt: skip
    return engine


def gone_check(process: psutil.Process) -> Callable[[], bool]:
    return lambda: not _alive(process)


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)


def _alive(process: psutil.Process) -> bool:
    try:
        # is_running() also compares the start time, so a reused pid reads as gone.
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The live process ``pid`` if it is the one started at ``create_time`` (not a reused pid)."""
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > CREATE_TIME_TOLERANCE_S:
            return None
    except psutil.Error:
        return None
    return process if _alive(process) else None


def _cmdline(process: psutil.Process) -> list[str] | None:
    try:
        return process.cmdline()
    except psutil.Error:
        return None


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {
            "model_id": str(raw["model_id"]),
            "instance_id": str(raw["instance_id"]),
            "pid": int(raw["pid"]),
            "create_time": float(raw["create_time"]),
            "argv": [str(arg) for arg in raw["argv"]],
            "owner_pid": int(raw["owner_pid"]),
            "owner_create_time": float(raw["owner_create_time"]),
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log_event(logging.WARNING, "engine record unreadable", path=str(path), error=str(exc))
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data, indent=2), encoding="utf-8")
    partial.replace(path)


def log_tail(path: Path) -> str:
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(size - LOG_TAIL_BYTES, 0))
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    if size > LOG_TAIL_BYTES:
        text = text.partition("\n")[2]  # drop the cut first line
    return text.strip() or "(empty log)"


def recorded(directory: Path) -> set[str]:
    return {p.stem for p in directory.glob("*.json")}


def prune_logs(directory: Path, keep: int, live: set[str]) -> None:
    """Keep the ``keep`` newest logs of engines not in ``live``; drop an emptied directory."""
    try:
        logs = [p for p in directory.glob("*.log") if p.stem not in live]
        logs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in logs[keep:]:
            old.unlink(missing_ok=True)
        if not any(directory.iterdir()):
            directory.rmdir()
    except OSError:
        pass  # gone already, or another process is writing to it


def delete_logs(directory: Path) -> None:
    prune_logs(directory, keep=0, live=recorded(directory))
