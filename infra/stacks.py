"""The Pulumi stacks of one project, each in its own local workspace (Automation API).

:class:`StackWorkspace` creates or selects a stack in its own work dir under one backend, with
the passphrase secrets provider, and runs CLI calls on it, turning the CLI's errors into
:class:`~domain.deployment.DeployerError` with its last meaningful line (:func:`cli_message`).
A stack locked by a live update raises ``DeployerError(reason="StackLocked")`` for the caller
to retry; a lock whose owner is known dead is cancelled and the call run once more. The lock
names its holder's host, which for an executor is its pod: on this host the holder is dead
when its pid is gone or belongs to a process started after the lock (a restarted container);
from another host, when ``peer_alive`` says that pod no longer exists (an executor killed in
an update and replaced by a pod of another name). Only when the cluster cannot tell is a lock
older than ``stale_lock_age_s`` taken as abandoned.
:class:`Progress` keeps the latest thing an operation reported, from the engine's events.

Every call runs the synchronous, slow CLI: callers run them in worker threads. What a stack
holds, when to update it and how many operations run at once are left to
:mod:`infra.pulumi_deployer`.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import psutil
from pulumi import automation as auto
from pydantic import SecretStr

from domain.deployment import DeployerError

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


# --- the CLI's errors ---------------------------------------------------------------------------

_LOCK_OWNER = re.compile(r"created by (?P<who>\S+) \(pid (?P<pid>\d+)\) at (?P<at>\S+)")
_GENERIC_ERRORS = frozenset({"update failed", "destroy failed", "preview failed", "refresh failed"})


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    created_at: float  # epoch seconds


def lock_owners(text: str) -> list[LockOwner]:
    """The owners a DIY backend names in its "the stack is currently locked" error."""
    owners = []
    for match in _LOCK_OWNER.finditer(text):
        try:
            created = datetime.fromisoformat(match["at"]).timestamp()
        except ValueError:
            continue
        owners.append(LockOwner(match["who"].rpartition("@")[2], int(match["pid"]), created))
    return owners


def cli_message(error: auto.CommandError) -> str:
    """The CLI's last meaningful error line, rather than the whole transcript."""
    text = str(error)
    stdout, _, stderr = text.partition("\n stderr: ")
    stdout = stdout.partition("\n stdout: ")[2]

    def errors(chunk: str) -> list[str]:
        lines = [line.strip() for line in chunk.splitlines()]
        return [line for line in lines if line.startswith("error:")]

    specific = [
        line
        for line in errors(stderr) + errors(stdout)
        if line.removeprefix("error:").strip().rstrip(".") not in _GENERIC_ERRORS
    ]
    if specific:
        return specific[-1].removeprefix("error:").strip()
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else text.strip().splitlines()[0]


# --- progress -----------------------------------------------------------------------------------

_VERBS = {
    "create": ("creating", "created"),
    "update": ("updating", "updated"),
    "replace": ("replacing", "replaced"),
    "create-replacement": ("replacing", "replaced"),
    "delete": ("deleting", "deleted"),
    "delete-replaced": ("deleting", "deleted"),
}


class Progress:
    """The latest thing an operation reported; written by the CLI's threads, read by apply."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.message = f"{label}: starting"

    def on_event(self, event: auto.EngineEvent) -> None:
        step = event.resource_pre_event or event.res_outputs_event
        if step is not None:
            meta = step.metadata
            verbs = _VERBS.get(meta.op.value)
            if verbs is None or meta.type.startswith(("pulumi:", "aif:")):
                return
            verb = verbs[0] if event.resource_pre_event is not None else verbs[1]
            kind = meta.type.rpartition(":")[2]
            self.message = f"{self.label}: {verb} {kind} {meta.urn.rpartition('::')[2]}"
        elif event.diagnostic_event is not None and event.diagnostic_event.severity == "error":
            self.message = f"{self.label}: error: {event.diagnostic_event.message.strip()}"

    def on_output(self, line: str) -> None:
        if line.strip():
            logger.debug("pulumi: %s", line.rstrip())


# --- the workspace ------------------------------------------------------------------------------


def run_cli(call: Callable[[], _T], reason: str) -> _T:
    """Run one CLI call; its failure becomes a retryable ``DeployerError(reason=reason)``."""
    try:
        return call()
    except auto.CommandError as exc:
        raise DeployerError(cli_message(exc), reason=reason) from exc


class StackWorkspace:
    """The stacks of one project, one work dir each under ``work_root``, all in one backend."""

    def __init__(
        self,
        project_name: str,
        program: auto.PulumiFn,
        *,
        work_root: Path,
        state_dir: Path,
        backend_url: str,
        passphrase: SecretStr,
        pulumi_command: auto.PulumiCommand | None,
        stale_lock_age_s: float,
        clock: Callable[[], float],
        peer_alive: Callable[[str], bool | None] = lambda host: None,
    ) -> None:
        self._project_name = project_name
        self._program = program
        self._work_root = work_root
        self._state_dir = state_dir
        self._backend_url = backend_url
        self._passphrase = passphrase
        self._command = pulumi_command
        self._command_lock = threading.Lock()
        self._stale_lock_age_s = stale_lock_age_s
        self._clock = clock
        self._peer_alive = peer_alive

    def stack(self, name: str, *, create: bool) -> auto.Stack:
        """The stack ``name``; raises ``auto.StackNotFoundError`` if absent and not ``create``."""
        work_dir = self._work_root / name
        work_dir.mkdir(parents=True, exist_ok=True)
        if self._backend_url.startswith("file://"):
            self._state_dir.mkdir(parents=True, exist_ok=True)
        options = auto.LocalWorkspaceOptions(
            work_dir=str(work_dir),
            project_settings=auto.ProjectSettings(
                name=self._project_name, runtime="python", main=str(work_dir)
            ),
            secrets_provider="passphrase",
            env_vars={
                "PULUMI_BACKEND_URL": self._backend_url,
                "PULUMI_CONFIG_PASSPHRASE": self._passphrase.get_secret_value(),
                "PULUMI_SKIP_UPDATE_CHECK": "true",
            },
            pulumi_command=self._pulumi_command(),
        )
        select = auto.create_or_select_stack if create else auto.select_stack
        try:
            return select(name, self._project_name, self._program, opts=options)
        except auto.StackNotFoundError:
            raise
        except auto.CommandError as exc:
            raise DeployerError(cli_message(exc), reason="PulumiError") from exc

    def remove_work_dir(self, name: str) -> None:
        shutil.rmtree(self._work_root / name, ignore_errors=True)

    def unlocked(self, stack: auto.Stack, call: Callable[[], _T], reason: str) -> _T:
        """Run ``call``; on a lock held by a dead owner, cancel it and run once more."""
        try:
            return run_cli(call, reason)
        except DeployerError as exc:
            locked = exc.__cause__
            if not isinstance(locked, auto.ConcurrentUpdateError):
                raise
        owners = lock_owners(str(locked))
        if not owners or not all(self._owner_dead(owner) for owner in owners):
            holders = ", ".join(f"{o.host} pid {o.pid}" for o in owners) or "another update"
            raise DeployerError(
                f"stack {stack.name} is locked by {holders}; retrying later",
                reason="StackLocked",
                retryable=True,
            ) from locked
        logger.warning(
            "cancelling stale lock model=%s owners=%s", stack.name,
            [(o.host, o.pid, o.created_at) for o in owners],
        )  # fmt: skip
        run_cli(stack.cancel, reason)
        try:
            return run_cli(call, reason)
        except DeployerError as exc:
            if isinstance(exc.__cause__, auto.ConcurrentUpdateError):
                raise DeployerError(
                    f"stack {stack.name} was locked again; retrying later",
                    reason="StackLocked",
                    retryable=True,
                ) from exc.__cause__
            raise

    def _pulumi_command(self) -> auto.PulumiCommand:
        with self._command_lock:
            if self._command is None:
                try:
                    self._command = auto.PulumiCommand()
                except FileNotFoundError as exc:
                    raise DeployerError(
                        "the pulumi CLI is not on PATH: install it (the aif image ships it) "
                        "or set AIF_RUNTIME=local",
                        reason="PulumiNotInstalled",
                        retryable=False,
                    ) from exc
            return self._command

    def _owner_dead(self, owner: LockOwner) -> bool:
        if owner.host == socket.gethostname():
            return not _alive_since(owner.pid, owner.created_at)
        alive = self._peer_alive(owner.host)
        if alive is not None:
            return not alive
        # The cluster cannot tell (not in one, no grant): only age tells a lock is abandoned.
        return self._clock() - owner.created_at > self._stale_lock_age_s


def _alive_since(pid: int, created_at: float) -> bool:
    """Whether ``pid`` is a process that was already running when the lock was taken."""
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return psutil.pid_exists(pid)
    # The lock's time has whole seconds; a pid reused after a restart started later.
    return started <= created_at + 1


__all__ = [
    "LockOwner",
    "Progress",
    "StackWorkspace",
    "cli_message",
    "lock_owners",
    "run_cli",
]
