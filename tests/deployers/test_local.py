"""LocalDeployer with real processes: a stand-in engine (``fake_engine.py``) and the simulator.

Every wait is a bounded polling loop; every test leaves no engine behind (the ``reaper``
fixture kills any stand-in engine of the test's models still running, whoever started it).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from api.deployers.launch import engine_command
from api.deployers.local import LocalDeployer
from domain.deployment import DeployerError, DeploymentSpec, DeploymentState, Phase
from domain.records import Pvc
from domain.settings import Settings
from tests.conftest import free_port

FAKE_ENGINE = str(Path(__file__).with_name("fake_engine.py"))
REPO_ROOT = Path(__file__).resolve().parents[2]
PRESET = "DeepSeek-R1-Distill-Qwen-7B"
WAIT_S = 30.0  # generous bound for engines to start or die on a loaded CI machine


def fake_command(engine: str, spec: DeploymentSpec, port: int, extra_args: list[str]) -> list[str]:
    return [sys.executable, FAKE_ENGINE, "--port", str(port), "--model-id", spec.model_id,
            "--model-type", spec.type, *extra_args]  # fmt: skip


def make_spec(
    model_id: str, replicas: int, generation: int = 1, type_: str = PRESET
) -> DeploymentSpec:
    return DeploymentSpec(
        model_id=model_id,
        name="chat",
        type=type_,
        resource_type="nvidia.com/gpu",
        version="",
        replicas=replicas,
        pvc=Pvc(name="models", path="/chat"),
        generation=generation,
    )


def fake_engines(model_id: str) -> list[psutil.Process]:
    """Live (not zombie) stand-in engines of models whose id contains ``model_id``."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if cmdline[1:2] != [FAKE_ENGINE] or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(model_id in arg for arg in cmdline):
            found.append(process)
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def settle(
    deployer: LocalDeployer,
    spec: DeploymentSpec,
    phase: Phase,
    also: Callable[[DeploymentState], bool] = lambda state: True,
) -> DeploymentState:
    """Apply ``spec`` as the reconciler does until the deployment is ``phase`` and ``also``."""
    deadline = time.monotonic() + WAIT_S
    while True:
        state = await deployer.apply(spec)
        if state.phase is phase and also(state):
            return state
        assert time.monotonic() < deadline, f"still {state.phase}: {state.message}"
        await asyncio.sleep(0.05)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def records(data_dir: Path, model_id: str = "*") -> list[Path]:
    return sorted((data_dir / "engines").glob(f"{model_id}/*.json"))


@pytest.fixture
def model_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture(autouse=True)
def reaper(model_id: str) -> Iterator[None]:
    yield
    simulators = [
        child
        for child in psutil.Process().children(recursive=True)
        if "simulator" in _cmdline(child)
    ]
    leftovers = fake_engines(model_id) + simulators
    for process in leftovers:
        process.kill()
    psutil.wait_procs(leftovers, timeout=5)
    assert not leftovers, f"test left engines behind: {[p.pid for p in leftovers]}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, engine_ready_timeout_s=WAIT_S)


@contextlib.asynccontextmanager
async def running(settings: Settings, **updates: object) -> AsyncIterator[LocalDeployer]:
    deployer = LocalDeployer(settings.model_copy(update=updates), command_builder=fake_command)
    try:
        yield deployer
    finally:
        await deployer.close()


@pytest.fixture
async def deployer(settings: Settings) -> AsyncIterator[LocalDeployer]:
    async with running(settings) as deployer:
        yield deployer


async def test_scales_to_exactly_the_desired_count(
    deployer: LocalDeployer, model_id: str, settings: Settings
) -> None:
    state = await settle(deployer, make_spec(model_id, 0), Phase.READY)
    assert state.endpoints == ()
    assert fake_engines(model_id) == []

    state = await settle(deployer, make_spec(model_id, 2), Phase.READY)
    assert state.ready_replicas == 2
    assert state.message == "2/2 instances ready"
    assert len(fake_engines(model_id)) == 2
    async with httpx.AsyncClient(trust_env=False) as client:
        for endpoint in state.endpoints:
            assert endpoint.ready
            assert (await client.get(f"{endpoint.url}/health")).status_code == 200
    oldest = state.endpoints[0].instance_id

    state = await settle(deployer, make_spec(model_id, 1), Phase.READY)
    assert [e.instance_id for e in state.endpoints] == [oldest]
    await wait_until(lambda: len(fake_engines(model_id)) == 1, "the newest engine to stop")
    await wait_until(lambda: len(records(settings.data_dir, model_id)) == 1, "its record to go")

    assert await deployer.remove(model_id)
    assert fake_engines(model_id) == []
    assert not (settings.data_dir / "engines" / model_id).exists()


async def test_reports_progress_before_ready(settings: Settings, model_id: str) -> None:
    async with running(settings, engine_args=["--startup-s", "60"]) as deployer:
        state = await deployer.apply(make_spec(model_id, 2))
        assert state.phase is Phase.PROGRESSING
        assert state.message == "0/2 instances ready"
        assert [e.ready for e in state.endpoints] == [False, False]
        await wait_until(lambda: len(fake_engines(model_id)) == 2, "two engines")


async def test_close_stops_every_engine(
    deployer: LocalDeployer, model_id: str, settings: Settings
) -> None:
    other = f"{model_id}-other"
    await settle(deployer, make_spec(model_id, 2), Phase.READY)
    await deployer.apply(make_spec(other, 1))
    assert len(fake_engines(model_id)) == 3

    await deployer.close()
    assert fake_engines(model_id) == []
    assert records(settings.data_dir) == []


async def test_a_crashed_engine_is_replaced(deployer: LocalDeployer, model_id: str) -> None:
    first = await settle(deployer, make_spec(model_id, 1), Phase.READY)
    [victim] = fake_engines(model_id)
    victim.kill()

    def replaced(state: DeploymentState) -> bool:
        return state.endpoints[0].instance_id != first.endpoints[0].instance_id

    state = await settle(deployer, make_spec(model_id, 1), Phase.READY, also=replaced)
    assert state.ready_replicas == 1
    [engine] = fake_engines(model_id)
    assert engine.pid != victim.pid


async def test_a_crash_loop_fails_with_the_log_tail(settings: Settings, model_id: str) -> None:
    async with running(settings, engine_args=["--mode", "crash"]) as deployer:
        state = await settle(deployer, make_spec(model_id, 1), Phase.FAILED)
        assert state.reason == "EngineCrashed"
        assert "RuntimeError: fake engine cannot load its weights" in state.message
        # The failure sticks: no more restarts for this generation.
        assert (await deployer.apply(make_spec(model_id, 1))).phase is Phase.FAILED
        assert fake_engines(model_id) == []
        assert records(settings.data_dir, model_id) == []
        # A new generation is a new try.
        state = await deployer.apply(make_spec(model_id, 1, generation=2))
        assert state.phase is Phase.PROGRESSING


async def test_an_engine_never_ready_times_out(settings: Settings, model_id: str) -> None:
    async with running(
        settings, engine_args=["--mode", "hang"], engine_ready_timeout_s=0.5
    ) as deployer:
        state = await settle(deployer, make_spec(model_id, 1), Phase.FAILED)
        assert state.reason == "EngineStartTimeout"
        assert "not healthy 0.5s after start" in state.message
        await wait_until(lambda: fake_engines(model_id) == [], "the stuck engine to stop")


async def test_a_new_command_replaces_instances_and_a_bare_generation_bump_does_not(
    deployer: LocalDeployer, model_id: str
) -> None:
    first = await settle(deployer, make_spec(model_id, 1), Phase.READY)
    same = await settle(deployer, make_spec(model_id, 1, generation=2), Phase.READY)
    assert same.endpoints == first.endpoints

    changed = await settle(deployer, make_spec(model_id, 1, 3, type_="QwQ-32B"), Phase.READY)
    assert changed.endpoints[0].instance_id != first.endpoints[0].instance_id
    await wait_until(lambda: len(fake_engines(model_id)) == 1, "the old engine to stop")
    [engine] = fake_engines(model_id)
    assert "QwQ-32B" in engine.cmdline()


def kill_aif_child(data_dir: Path, model_id: str, die_with_parent: bool = True) -> None:
    """Run an aif process that deploys two engines of ``model_id``, then ``kill -9`` it."""
    code = AIF_CHILD if die_with_parent else DISABLE_PDEATHSIG + AIF_CHILD
    child = subprocess.Popen(
        [sys.executable, "-c", code, FAKE_ENGINE, str(data_dir), model_id],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        wait_for(lambda: (data_dir / "ready").exists() or child.poll() is not None, "the child")
        assert child.poll() is None, "the aif child process failed"
        engines = fake_engines(model_id)
        assert len(engines) == 2
        assert {engine.ppid() for engine in engines} == {child.pid}
    finally:
        child.kill()
        child.wait(timeout=WAIT_S)


def test_engines_die_with_a_killed_aif(tmp_path: Path, model_id: str) -> None:
    kill_aif_child(tmp_path, model_id)
    wait_for(lambda: fake_engines(model_id) == [], "the engines to die with their parent")

    assert asyncio.run(LocalDeployer(Settings(data_dir=tmp_path)).recover()) == 0
    assert records(tmp_path) == []


async def test_a_new_deployer_kills_engines_a_killed_aif_left(
    tmp_path: Path, model_id: str
) -> None:
    kill_aif_child(tmp_path, model_id, die_with_parent=False)
    assert len(fake_engines(model_id)) == 2  # without PDEATHSIG they outlive their aif

    assert await LocalDeployer(Settings(data_dir=tmp_path)).recover() == 2
    assert fake_engines(model_id) == []
    assert records(tmp_path) == []


@pytest.fixture
def stray_engine(model_id: str) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """A stand-in engine started without PDEATHSIG, as if an earlier aif had left it."""
    argv = fake_command("simulator", make_spec(model_id, 1), free_port(), [])
    process = subprocess.Popen(argv, start_new_session=True)
    try:
        yield process, argv
    finally:
        process.kill()
        process.wait()


async def test_a_new_deployer_kills_engines_a_dead_aif_left(
    settings: Settings, model_id: str, stray_engine: tuple[subprocess.Popen[bytes], list[str]]
) -> None:
    orphan, argv = stray_engine
    # The owner's pid is alive (this test) but started at another time: its aif is gone.
    write_record(settings.data_dir, model_id, orphan.pid, argv, owner=(os.getpid(), 0.0))

    assert await LocalDeployer(settings).recover() == 1
    assert orphan.poll() == -signal.SIGTERM
    assert records(settings.data_dir) == []


async def test_a_new_deployer_spares_what_it_does_not_own(
    settings: Settings, stray_engine: tuple[subprocess.Popen[bytes], list[str]]
) -> None:
    process, argv = stray_engine
    me = psutil.Process()
    dead_owner = (me.pid, 0.0)
    # A reused pid: the process is alive but started at another time than recorded.
    write_record(settings.data_dir, "reused", process.pid, argv, dead_owner, skew_s=5)
    # Another command line behind the recorded pid.
    write_record(settings.data_dir, "other", process.pid, [*argv, "-x"], dead_owner)
    # A live owner: another aif process still runs this engine.
    write_record(settings.data_dir, "owned", process.pid, argv, (me.pid, me.create_time()))

    assert await LocalDeployer(settings).recover() == 0
    assert process.poll() is None
    assert [p.parent.name for p in records(settings.data_dir)] == ["owned"]


async def test_the_real_simulator_serves(settings: Settings, model_id: str) -> None:
    pytest.importorskip("simulator")
    deployer = LocalDeployer(settings)
    try:
        state = await settle(deployer, make_spec(model_id, 1), Phase.READY)
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"{state.endpoints[0].url}/health")
        assert response.status_code == 200
        assert await deployer.remove(model_id)
    finally:
        await deployer.close()


async def test_an_engine_unhealthy_past_the_grace_is_replaced(
    settings: Settings, model_id: str
) -> None:
    """A simulator told to fail /health leaves the ready set, then is stopped and replaced."""
    pytest.importorskip("simulator")
    grace_s = 1.0
    deployer = LocalDeployer(
        settings.model_copy(
            update={"unhealthy_replace_s": grace_s, "engine_args": ["--startup-delay-s", "0"]}
        )
    )
    spec = make_spec(model_id, 2)
    try:
        first = await settle(deployer, spec, Phase.READY)
        victim, kept = first.endpoints
        [victim_engine] = [
            p for p in psutil.Process().children(recursive=True)
            if str(victim.url.rsplit(":", 1)[1]) in _cmdline(p)
        ]  # fmt: skip
        async with httpx.AsyncClient(trust_env=False) as client:
            answer = await client.post(f"{victim.url}/admin/faults", json={"healthy": False})
            assert answer.status_code == 200
        unhealthy = await settle(
            deployer, spec, Phase.PROGRESSING, also=lambda s: s.ready_replicas == 1
        )
        assert unhealthy.message == "1/2 instances ready"
        assert [e.ready for e in unhealthy.endpoints] == [False, True]

        def replaced(state: DeploymentState) -> bool:
            return victim.instance_id not in {e.instance_id for e in state.endpoints}

        state = await settle(deployer, spec, Phase.READY, also=replaced)
        assert state.ready_replicas == 2
        assert kept.instance_id in {e.instance_id for e in state.endpoints}
        await wait_until(lambda: not victim_engine.is_running(), "the unhealthy engine to stop")
    finally:
        await deployer.close()


def test_launch_commands(tmp_path: Path) -> None:
    spec = make_spec("m", 1)
    argv = engine_command("simulator", spec, 8001, ["--fault", "x"])
    assert argv[1:] == [
        "-m", "simulator", "--host", "127.0.0.1", "--port", "8001",
        "--served-model-name", "chat", "--model-type", PRESET, "--fault", "x",
    ]  # fmt: skip
    with pytest.raises(DeployerError, match="unknown engine"):
        engine_command("tgi", spec, 8001, [])
    if _missing("llama_cpp"):
        with pytest.raises(DeployerError, match=r"pip install 'aif\[llama\]'"):
            engine_command("llama-cpp", spec, 8001, [], data_dir=tmp_path)


DISABLE_PDEATHSIG = "import api.deployers._processes as m; m.die_with_parent_hook = lambda: None\n"
AIF_CHILD = """
import asyncio, sys
from pathlib import Path
from domain.deployment import DeploymentSpec, Phase
from api.deployers.local import LocalDeployer
from domain.records import Pvc
from domain.settings import Settings

fake_engine, data_dir, model_id = sys.argv[1:4]

def build(engine, spec, port, extra_args):
    return [sys.executable, fake_engine, "--port", str(port), "--model-id", spec.model_id]

async def main():
    deployer = LocalDeployer(Settings(data_dir=Path(data_dir)), command_builder=build)
    spec = DeploymentSpec(model_id, "chat", "QwQ-32B", "nvidia.com/gpu", "", 2,
                          Pvc(name="models", path="chat"), 1)
    while (await deployer.apply(spec)).phase is not Phase.READY:
        await asyncio.sleep(0.05)
    Path(data_dir, "ready").touch()
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def write_record(
    data_dir: Path,
    model_id: str,
    pid: int,
    argv: list[str],
    owner: tuple[int, float],
    skew_s: float = 0.0,
) -> None:
    path = data_dir / "engines" / model_id / f"{uuid.uuid4().hex[:8]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"model_id": model_id, "instance_id": path.stem, "pid": pid, "port": 0,
              "create_time": psutil.Process(pid).create_time() + skew_s, "argv": argv,
              "generation": 1, "owner_pid": owner[0], "owner_create_time": owner[1]}  # fmt: skip
    path.write_text(json.dumps(record), encoding="utf-8")


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None
