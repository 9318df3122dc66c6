"""LocalDeployer: every model instance is one engine process on this machine.

:meth:`LocalDeployer.apply` keeps exactly ``spec.replicas`` engines running the spec's command:
it reaps engines that exited and starts replacements, starts new instances on free ports of
``127.0.0.1``, stops the newest on scale-down, and replaces every instance when the command
changes (model type, served name, weights ...). A generation bump that leaves the command as it
was keeps the running engines. Each call probes every engine's health route once and reports
``READY`` when all desired instances answer, ``PROGRESSING`` ("2/3 instances ready") before.
It returns promptly: engines start in the background and stopped engines are reaped by tasks.
Failures stick until the generation changes: an engine that keeps exiting soon after start
gives ``FAILED``/``EngineCrashed`` and one not ready within ``engine_ready_timeout_s`` gives
``FAILED``/``EngineStartTimeout``, both with the tail of the engine's log. An engine that was
ready, then failed ``UNHEALTHY_AFTER_PROBES`` probes in a row, leaves the endpoints' ready set
at once; unhealthy for ``unhealthy_replace_s`` more, it is stopped (its log kept) and a new one
started in its place.

No engine outlives aif:

- Engines start in a session of their own (stops reach the engine's own children, a
  terminal's Ctrl-C does not) and, on Linux, with ``PR_SET_PDEATHSIG=SIGKILL``, so the kernel
  kills them when aif dies, even by ``kill -9``. The kernel sends that signal when the *thread*
  that forked exits, so engines are spawned on the event-loop thread, never an executor thread.
- Every instance is recorded in ``<data_dir>/engines/<model_id>/<instance_id>.json`` (pid, port,
  psutil create_time, argv, generation, owning aif process), its output in the ``.log`` beside
  it. On first use (or :meth:`LocalDeployer.recover`) a deployer reads the records whose owner
  is gone, kills the recorded engines still alive whose create_time and command line match (a
  reused pid never matches) and deletes the records. Logs of crashed engines are kept, a few
  per model, until the model is removed.

Left to others: how many replicas to run (the executor and the scaler), routing requests to
endpoints (the gateway), each engine kind's command line (:mod:`api.deployers.launch`), and the
process mechanics described above: spawning, stopping, instance records and orphan detection
(:mod:`api.deployers._processes`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import psutil

from api.accelerators import Accelerators
from api.deployers._processes import (
    delete_logs,
    forget,
    gone_check,
    log_event,
    log_tail,
    orphan,
    prune_logs,
    recorded,
    spawn,
    terminate,
    write_json,
)
from api.deployers.launch import (
    ENGINE_HOST,
    engine_command,
    engine_env,
    health_path,
    visible_devices_env,
)
from domain.accelerators import Placement
from domain.deployment import DeployerError, DeploymentSpec, DeploymentState, Phase
from domain.device_faults import find_device_fault
from domain.presets import card_shape
from domain.records import Endpoint
from domain.settings import Settings

CommandBuilder = Callable[[str, DeploymentSpec, int, list[str]], list[str]]

HEALTH_TIMEOUT_S = 1.0  # apply probes every engine; one stuck engine must not stall the pass
UNHEALTHY_AFTER_PROBES = 3  # a busy engine may miss a probe; three misses take it out of rotation
EARLY_EXIT_S = 60.0  # an exit this soon after start counts towards a crash loop
CRASH_LOOP_EXITS_PER_INSTANCE = 3  # tries per desired instance within the window before FAILED
CRASH_LOOP_WINDOW_S = 600.0  # early exits older than this are forgiven
KEPT_CRASH_LOGS = 5  # per model: logs of exited engines kept for diagnosis
DRAIN_POLL_S = 0.5  # how often a draining engine is checked for connections


@dataclass
class _Instance:
    instance_id: str
    port: int
    process: subprocess.Popen[bytes]
    command_key: tuple[str, ...]
    started_at: float  # time.monotonic()
    record_path: Path
    ready: bool = False
    ever_ready: bool = False
    failed_probes: int = 0
    unhealthy_since: float | None = None  # time.monotonic() it was taken out of the ready set
    placement: Placement | None = None  # its cards, when the deployer keeps an inventory
    on_probation: list[tuple[str, int]] = field(default_factory=list)  # quarantined cards tried
    ready_at: float | None = None  # time.monotonic() it first answered its health probe

    @property
    def url(self) -> str:
        return f"http://{ENGINE_HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.record_path.with_suffix(".log")


@dataclass
class _Model:
    instances: list[_Instance] = field(default_factory=list)  # oldest first
    generation: int = 0
    early_exits: list[float] = field(default_factory=list)  # time.monotonic() of each
    failure: DeploymentState | None = None
    stopping: set[asyncio.Task[None]] = field(default_factory=set)
    unstoppable: list[_Instance] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: str = ""  # why instances wait for cards, when they do
    name: str = ""


class LocalDeployer:
    """The embedded deployer: engine processes on this machine (see the module docstring).

    ``command_builder(engine, spec, port, extra_args)`` gives an engine's argv; by default
    :func:`api.deployers.launch.engine_command` with weights under ``settings.data_dir``.
    """

    # Engines die with aif (the parent-death signal): endpoints of an earlier run are stale.
    instances_outlive_executor = False

    def __init__(
        self,
        settings: Settings,
        command_builder: CommandBuilder | None = None,
        accelerators: Accelerators | None = None,
    ) -> None:
        self._settings = settings
        # Without an inventory, engines start with no card accounting (max_instance the limit).
        self.accelerators = accelerators
        self._build: CommandBuilder = command_builder or functools.partial(
            engine_command, data_dir=settings.data_dir
        )
        self._root = settings.data_dir / "engines"
        self._models: dict[str, _Model] = {}
        self._client: httpx.AsyncClient | None = None
        me = psutil.Process()
        self._owner = {"owner_pid": me.pid, "owner_create_time": me.create_time()}
        self._recovered = False
        self._recover_lock = asyncio.Lock()

    async def apply(self, spec: DeploymentSpec) -> DeploymentState:
        await self.recover()
        while True:
            model = self._models.setdefault(spec.model_id, _Model())
            async with model.lock:
                if self._models.get(spec.model_id) is model:  # else removed while we waited
                    return await self._apply(spec, model)

    async def remove(self, model_id: str) -> bool:
        await self.recover()
        model = self._models.get(model_id)
        if model is not None:
            async with model.lock:
                if not await self._stop_all(model_id, model, "remove"):
                    return False
                del self._models[model_id]
        delete_logs(self._root / model_id)
        return True

    async def close(self) -> None:
        for model_id, model in list(self._models.items()):
            async with model.lock:
                await self._stop_all(model_id, model, "close")
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def recover(self) -> int:
        """Kill engines left by a dead aif process and drop stale records; once per deployer.

        Runs on first use; call it at startup to clean up before any model is applied.
        Returns how many engines it killed.
        """
        async with self._recover_lock:
            if self._recovered:
                return 0
            self._recovered = True
            if self.accelerators is not None:
                await asyncio.to_thread(self.accelerators.load)
            paths = sorted(self._root.glob("*/*.json"))
            killed = sum(await asyncio.gather(*(self._recover_record(p) for p in paths)))
            for directory in self._root.glob("*"):
                prune_logs(directory, keep=KEPT_CRASH_LOGS, live=recorded(directory))
            return killed

    async def _apply(self, spec: DeploymentSpec, model: _Model) -> DeploymentState:
        replicas = max(spec.replicas, 0)
        key = tuple(self._build(self._settings.engine, spec, 0, self._settings.engine_args))
        if model.generation != spec.generation:
            model.generation, model.failure, model.early_exits = spec.generation, None, []
        exited = self._reap(spec.model_id, model, replicas)
        stale = [i for i in model.instances if i.command_key != key]
        if stale:
            self._stop_later(spec.model_id, model, stale, "command changed")
        if len(model.instances) > replicas:
            victims = model.instances[replicas:]
            self._stop_later(spec.model_id, model, victims, "scale down", drain=True)
        await self._probe(model)
        self._check_start_timeouts(spec.model_id, model)
        unhealthy = self._replace_unhealthy(spec.model_id, model)
        model.waiting, model.name = "", spec.name
        if self.accelerators is not None:
            await asyncio.to_thread(self._end_probations, model)
        if model.failure is None:
            reason = (
                "replace exited" if exited
                else "replace unhealthy" if unhealthy
                else "rollout" if stale
                else "scale up"
            )  # fmt: skip
            for _ in range(replicas - len(model.instances)):
                if not self._start(spec, model, key, reason, replicas):
                    break
        endpoints = tuple(
            Endpoint(instance_id=i.instance_id, url=i.url, ready=i.ready,
                     accelerators=i.placement.names if i.placement else [])
            for i in model.instances
        )  # fmt: skip
        ready = sum(i.ready for i in model.instances)
        if model.failure is not None:
            return replace(model.failure, ready_replicas=ready, endpoints=endpoints)
        phase = Phase.READY if ready == replicas == len(model.instances) else Phase.PROGRESSING
        message = f"{ready}/{replicas} instances ready"
        if model.waiting:
            waiting = replicas - len(model.instances)
            message += f"; {waiting} instance{'s' if waiting > 1 else ''} {model.waiting}"
            return DeploymentState(phase, ready, endpoints, message, "InsufficientAccelerators")
        return DeploymentState(phase, ready, endpoints, message)

    def _start(
        self, spec: DeploymentSpec, model: _Model, key: tuple[str, ...], reason: str, replicas: int
    ) -> bool:
        """Start one instance; False when its cards are not there (``model.waiting`` says why)."""
        instance_id = secrets.token_hex(4)
        placement: Placement | None = None
        probation: list[tuple[str, int]] = []
        if self.accelerators is not None:
            cards_per_pod, pods = card_shape(spec.type, spec.resource_type)
            holder = (spec.model_id, spec.name, instance_id)
            placement = self.accelerators.place(spec.resource_type, cards_per_pod, pods, holder)
            if placement is None:
                model.waiting = self.accelerators.shortage(spec.resource_type, cards_per_pod, pods)
                log_event(logging.INFO, "engine waits for cards", model_id=spec.model_id,
                          replicas=replicas, live=len(model.instances),
                          reason=model.waiting)  # fmt: skip
                return False
            probation = self.accelerators.probation(placement)
        port = _free_port(taken={i.port for m in self._models.values() for i in m.instances})
        argv = self._build(self._settings.engine, spec, port, self._settings.engine_args)
        record_path = self._root / spec.model_id / f"{instance_id}.json"
        record_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **engine_env(self._settings.engine, spec)}
        if placement is not None:
            env.update(visible_devices_env(spec.resource_type, placement.visible_devices))
        try:
            process = spawn(argv, record_path.with_suffix(".log"), env)
        except OSError as exc:
            if self.accelerators is not None:
                self.accelerators.release_instance(instance_id)
            raise DeployerError(f"cannot run {argv[0]}: {exc}", "EngineStartFailed") from exc
        try:
            create_time = psutil.Process(process.pid).create_time()
        except psutil.Error:
            create_time = 0.0  # already gone: the next pass reaps it
        record = {"model_id": spec.model_id, "instance_id": instance_id, "pid": process.pid,
                  "port": port, "create_time": create_time, "argv": argv,
                  "generation": spec.generation, **self._owner}  # fmt: skip
        model.instances.append(
            _Instance(instance_id, port, process, key, time.monotonic(), record_path,
                      placement=placement, on_probation=probation)
        )  # fmt: skip
        try:
            write_json(record_path, record)
        except OSError as exc:  # the engine still dies with aif; only recovery needs the record
            log_event(
                logging.WARNING, "engine record not written", path=str(record_path), error=exc
            )
        log_event(logging.INFO, "engine start", model_id=spec.model_id, instance_id=instance_id,
                  pid=process.pid, port=port, generation=spec.generation, reason=reason,
                  replicas=replicas, live=len(model.instances),
                  cards=placement.names if placement else None,
                  probation=probation or None, argv=argv)  # fmt: skip
        return True

    def _reap(self, model_id: str, model: _Model, replicas: int) -> int:
        """Forget engines that exited; a crash loop sets the model's failure."""
        now = time.monotonic()
        exited = [i for i in model.instances if i.process.poll() is not None]
        for inst in exited:
            model.instances.remove(inst)
            inst.record_path.unlink(missing_ok=True)
            uptime_s = now - inst.started_at
            faulty = self._device_fault(model_id, model.name, inst)
            if uptime_s < EARLY_EXIT_S and not faulty:  # a broken card is not the model's fault
                model.early_exits.append(now)
            model.early_exits = [t for t in model.early_exits if now - t < CRASH_LOOP_WINDOW_S]
            limit = CRASH_LOOP_EXITS_PER_INSTANCE * max(replicas, 1)
            if len(model.early_exits) >= limit and model.failure is None:
                model.failure = DeploymentState(
                    Phase.FAILED,
                    reason="EngineCrashed",
                    message=f"engine exited {len(model.early_exits)} times soon after start "
                    f"(last: instance {inst.instance_id}, exit code {inst.process.returncode}); "
                    f"log tail:\n{log_tail(inst.log_path)}",
                )
            log_event(logging.WARNING, "engine exited", model_id=model_id,
                      instance_id=inst.instance_id, pid=inst.process.pid,
                      exit_code=inst.process.returncode, uptime_s=round(uptime_s, 1),
                      early_exits=len(model.early_exits), limit=limit,
                      decision="give up" if model.failure else "replace")  # fmt: skip
        if exited:
            live = {i.instance_id for i in model.instances}
            prune_logs(self._root / model_id, keep=KEPT_CRASH_LOGS, live=live)
        return len(exited)

    async def _probe(self, model: _Model) -> None:
        if self._client is None:
            # trust_env=False: a proxy from the environment must not sit between aif and 127.0.0.1.
            # No pooled connections: a probe's idle connection would count as a client to a
            # draining engine (see _drain) and hold it for the engine's keep-alive.
            self._client = httpx.AsyncClient(
                timeout=HEALTH_TIMEOUT_S,
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        client, path = self._client, health_path(self._settings.engine)
        instances = list(model.instances)
        results = await asyncio.gather(*(_healthy(client, i.url + path) for i in instances))
        for inst, ok in zip(instances, results, strict=True):
            inst.failed_probes = 0 if ok else inst.failed_probes + 1
            if ok:
                if inst.unhealthy_since is not None:
                    log_event(logging.INFO, "engine healthy again", instance_id=inst.instance_id,
                              url=inst.url)  # fmt: skip
                inst.ready = inst.ever_ready = True
                inst.unhealthy_since = None
                if inst.ready_at is None:
                    inst.ready_at = time.monotonic()
            elif inst.ready and inst.failed_probes >= UNHEALTHY_AFTER_PROBES:
                inst.ready = False
                inst.unhealthy_since = time.monotonic()
                log_event(logging.WARNING, "engine unhealthy", instance_id=inst.instance_id,
                          url=inst.url, failed_probes=inst.failed_probes,
                          replace_after_s=self._settings.unhealthy_replace_s)  # fmt: skip

    def _replace_unhealthy(self, model_id: str, model: _Model) -> int:
        """Stop engines unhealthy for longer than the grace; the caller starts new ones."""
        grace_s = self._settings.unhealthy_replace_s
        now = time.monotonic()
        victims = [
            i for i in model.instances
            if i.unhealthy_since is not None and now - i.unhealthy_since > grace_s
        ]  # fmt: skip
        if victims:
            # Not drained: it answers no health probe, so it is not trusted with requests.
            self._stop_later(model_id, model, victims, f"unhealthy for over {grace_s:g}s",
                             keep=True)  # fmt: skip
        return len(victims)

    def _device_fault(self, model_id: str, name: str, inst: _Instance) -> bool:
        """Free the exited engine's cards; quarantine the one its device error names."""
        if self.accelerators is None or inst.placement is None:
            return False
        self.accelerators.release_instance(inst.instance_id)
        fault = find_device_fault(log_tail(inst.log_path))
        if fault is None:
            return False
        node, indices = inst.placement.pods[0]
        # The error names the physical card; one that names none condemns all the pod's cards.
        cards = [i for i in indices if i == fault.device] or list(indices)
        for index in cards:
            self.accelerators.device_fault((node, index), fault.line, (model_id, name))
        return True

    def _end_probations(self, model: _Model) -> None:
        """Release the quarantined cards whose trial instance held for the probation."""
        assert self.accelerators is not None
        probation_s = self._settings.quarantine_probation_s
        now = time.monotonic()
        for inst in model.instances:
            if (
                inst.on_probation
                and inst.ready_at is not None
                and now - inst.ready_at >= probation_s
            ):
                for node, index in inst.on_probation:
                    self.accelerators.release(node, index, "engine", "held through its probation")
                inst.on_probation = []

    def _check_start_timeouts(self, model_id: str, model: _Model) -> None:
        timeout_s = self._settings.engine_ready_timeout_s
        now = time.monotonic()
        late = [i for i in model.instances if not i.ever_ready and now - i.started_at > timeout_s]
        if late and model.failure is None:
            model.failure = DeploymentState(
                Phase.FAILED,
                reason="EngineStartTimeout",
                message=f"instance {late[0].instance_id} not healthy {timeout_s:g}s after start; "
                f"log tail:\n{log_tail(late[0].log_path)}",
            )
        if late:
            self._stop_later(model_id, model, late, f"not ready in {timeout_s:g}s", keep=True)

    def _stop_later(
        self,
        model_id: str,
        model: _Model,
        victims: list[_Instance],
        reason: str,
        keep: bool = False,
        drain: bool = False,
    ) -> None:
        """Take ``victims`` out of service now; a task stops and reaps them.

        With ``drain``, the task first lets their requests finish: out of the endpoints now,
        they leave routing, and they are stopped once nothing is connected to them any more
        (or after ``drain_timeout_s``).
        """
        victims = list(victims)
        for inst in victims:
            model.instances.remove(inst)
            log_event(logging.INFO, "engine stop", model_id=model_id,
                      instance_id=inst.instance_id, pid=inst.process.pid, port=inst.port,
                      ready=inst.ready, reason=reason, live=len(model.instances))  # fmt: skip
        task = asyncio.create_task(self._terminate_all(model, victims, keep_logs=keep, drain=drain))
        model.stopping.add(task)
        task.add_done_callback(model.stopping.discard)

    async def _stop_all(self, model_id: str, model: _Model, reason: str) -> bool:
        model.instances += model.unstoppable
        model.unstoppable = []
        if model.instances:
            self._stop_later(model_id, model, model.instances, reason)
        await asyncio.gather(*list(model.stopping))
        return not model.unstoppable

    async def _terminate_all(
        self, model: _Model, victims: list[_Instance], keep_logs: bool, drain: bool = False
    ) -> None:
        def reaped(inst: _Instance) -> Callable[[], bool]:
            return lambda: inst.process.poll() is not None

        if drain:
            await asyncio.gather(*(self._drain(i) for i in victims))
        results = await asyncio.gather(*(terminate(i.process.pid, reaped(i)) for i in victims))
        for inst, gone in zip(victims, results, strict=True):
            if not gone:
                log_event(logging.ERROR, "engine survived SIGKILL",
                          instance_id=inst.instance_id, pid=inst.process.pid)  # fmt: skip
                model.unstoppable.append(inst)
                continue
            inst.record_path.unlink(missing_ok=True)
            if self.accelerators is not None:
                self.accelerators.release_instance(inst.instance_id)
            if not keep_logs:
                inst.log_path.unlink(missing_ok=True)

    async def _drain(self, inst: _Instance) -> None:
        """Wait until nothing is connected to ``inst`` any more, within the drain timeout.

        Any engine will do: an open connection to it is a request in flight, or a pooled one
        that the gateway closes after its keep-alive.
        """
        # Routing tables are rebuilt from the endpoints each refresh: let them drop it first.
        await asyncio.sleep(2 * self._settings.routing_refresh_s)
        started = time.monotonic()
        while time.monotonic() - started < self._settings.drain_timeout_s:
            if not await asyncio.to_thread(_connected, inst.process.pid, inst.port):
                break
            await asyncio.sleep(DRAIN_POLL_S)
        log_event(logging.INFO, "engine drained", instance_id=inst.instance_id,
                  waited_s=round(time.monotonic() - started, 1))  # fmt: skip

    async def _recover_record(self, path: Path) -> int:
        engine = orphan(path)
        if engine is None:
            return 0
        if not await terminate(engine.pid, gone_check(engine)):
            log_event(logging.ERROR, "engine survived SIGKILL", pid=engine.pid, record=str(path))
            return 0
        forget(path)
        return 1


def _connected(pid: int, port: int) -> bool:
    """Whether any client is connected to the engine's port."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(
        c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        for c in connections
    )


async def _healthy(client: httpx.AsyncClient, url: str) -> bool:
    try:
        response = await client.get(url)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _free_port(taken: set[int]) -> int:
    # The engine binds the port moments later; if another process takes it first the engine
    # exits and the next pass replaces it on another port.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((ENGINE_HOST, 0))
            port: int = probe.getsockname()[1]
        if port not in taken:
            return port
