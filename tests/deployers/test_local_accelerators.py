"""Local engines on the inventory's cards, with real simulator processes.

Placement (each instance's cards on one node, handed to the engine as
``ASCEND_RT_VISIBLE_DEVICES``), waiting when the cards are not there (no engine started beyond
the inventory), and a device fault (``POST /admin/faults {"device_fault": true}``): the card
quarantined with the engine's error, kept in the store, the instance replaced on a healthy card,
and probation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from api.accelerators import Accelerators
from api.deployers.local import LocalDeployer
from api.store import SqliteModelStore
from domain.deployment import DeploymentSpec, DeploymentState, Phase
from domain.keys import AuditAction
from domain.records import Pvc
from domain.settings import Settings
from tests.deployers.test_local import WAIT_S, settle

SMALL = "DeepSeek-R1-Distill-Qwen-7B"  # one card per instance
LARGE = "QwQ-32B"  # four Ascend cards per instance


def spec(model_id: str, replicas: int, type_: str = SMALL) -> DeploymentSpec:
    return DeploymentSpec(model_id=model_id, name=f"m-{model_id[:6]}", type=type_,
                          resource_type="huawei.com/ascend-1980", version="", replicas=replicas,
                          pvc=Pvc(name="models", path="/m"), generation=1)  # fmt: skip


def simulators() -> list[psutil.Process]:
    """Live simulator engines this test process started (zombies are exited ones)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE and "simulator" in " ".join(p.cmdline()):
                found.append(p)
    return found


def visible_devices(state: DeploymentState) -> list[str]:
    """Each ready engine's ASCEND_RT_VISIBLE_DEVICES, as the process got it."""
    by_port = {}
    for p in simulators():
        argv = p.cmdline()
        by_port[argv[argv.index("--port") + 1]] = p.environ().get("ASCEND_RT_VISIBLE_DEVICES", "")
    return sorted(by_port[e.url.rsplit(":", 1)[1]] for e in state.endpoints)


@contextlib.asynccontextmanager
async def deployer(
    tmp_path: Path, cards: str, **updates: object
) -> AsyncIterator[tuple[LocalDeployer, SqliteModelStore]]:
    settings = Settings(data_dir=tmp_path, engine_ready_timeout_s=WAIT_S, local_accelerators=cards,
                        **updates)  # type: ignore[arg-type]  # fmt: skip
    store = SqliteModelStore(tmp_path / "aif.db")
    local = LocalDeployer(settings, accelerators=Accelerators(settings, store))
    try:
        yield local, store
    finally:
        await local.close()
        store.close()


@pytest.fixture(autouse=True)
def no_engine_left() -> AsyncIterator[None] | object:
    yield
    left = simulators()
    for p in left:
        p.kill()
    assert not left, "engines left behind"


async def test_instances_get_whole_nodes_and_the_rest_waits(tmp_path: Path) -> None:
    async with deployer(tmp_path, '{"node-a": 4, "node-b": 6}') as (local, _):
        wanted = spec("a" * 32, 3, LARGE)
        state = await settle(local, wanted, Phase.PROGRESSING, lambda s: s.ready_replicas == 2)
        assert state.reason == "InsufficientAccelerators"
        assert state.message == (
            "2/3 instances ready; 1 instance waiting for 4 huawei.com/ascend-1980 cards on one "
            "node; the largest free block is 2 (node-b)"
        )
        assert len(simulators()) == 2  # none started beyond the inventory
        cards = sorted(c for e in state.endpoints for c in e.accelerators)
        assert cards == [f"node-a/{i}" for i in range(4)] + [f"node-b/{i}" for i in range(4)]
        assert visible_devices(state) == ["0,1,2,3", "0,1,2,3"]
        view = local.accelerators.view() if local.accelerators else {}
        assert view["totals"]["huawei.com/ascend-1980"] == {
            "free": 2, "allocated": 8, "quarantined": 0
        }  # fmt: skip

        # One fewer wanted: nothing waits, and the cards of a removed model are free again.
        state = await settle(local, spec("a" * 32, 2, LARGE), Phase.READY)
        assert state.reason == "" and len(simulators()) == 2
        assert await local.remove("a" * 32)
        assert local.accelerators is not None
        assert local.accelerators.view()["totals"]["huawei.com/ascend-1980"]["free"] == 10


async def fault(
    local: LocalDeployer, store: SqliteModelStore, wanted: DeploymentSpec, faults: int = 1
) -> DeploymentState:
    """Fail the card under the model's only instance; apply until the card is quarantined."""
    state = await settle(local, wanted, Phase.READY)
    async with httpx.AsyncClient(trust_env=False) as client:
        answer = await client.post(f"{state.endpoints[0].url}/admin/faults",
                                   json={"device_fault": True})  # fmt: skip
        assert answer.json()["device_fault"] is True
    return await settle(local, wanted, Phase.PROGRESSING if faults > 1 else Phase.READY,
                        lambda _: [q.faults for q in store.quarantines()] == [faults])  # fmt: skip


async def test_a_device_fault_quarantines_the_card_and_the_instance_moves(tmp_path: Path) -> None:
    model = "b" * 32
    async with deployer(tmp_path, '{"node-a": 2}', quarantine_probation_s=0) as (local, store):
        state = await settle(local, spec(model, 1), Phase.READY)
        assert state.endpoints[0].accelerators == ["node-a/0"]
        await fault(local, store, spec(model, 1))

        state = await settle(local, spec(model, 1), Phase.READY,
                             lambda s: s.endpoints[0].accelerators == ["node-a/1"])  # fmt: skip
        assert visible_devices(state) == ["1"]
        (stored,) = store.quarantines()
        assert (stored.node, stored.index, stored.by) == ("node-a", 0, "engine")
        assert stored.reason.startswith("device fault on NPU 0")
        (event,) = [e for e in store.events() if e.action is AuditAction.ACCELERATOR_QUARANTINE]
        assert event.model_id == model and event.changes == {"card": {"to": "node-a/0"}}

        # The second instance has no card to go to: it waits, naming the quarantined card's absence.
        state = await settle(local, spec(model, 2), Phase.PROGRESSING, lambda s: bool(s.reason))
        assert "the largest free block is 0" in state.message and len(simulators()) == 1

    # A restart keeps the card out of service.
    async with deployer(tmp_path, '{"node-a": 2}', quarantine_probation_s=0) as (local, _):
        await local.recover()
        assert local.accelerators is not None
        assert local.accelerators.ledger.state("node-a", 0).value == "quarantined"


async def test_probation_releases_a_card_that_holds_and_keeps_one_that_fails_again(
    tmp_path: Path,
) -> None:
    model = "c" * 32
    async with deployer(tmp_path, "1", quarantine_probation_s=0.5) as (local, store):
        # The card fails, waits out its probation, is tried again and fails again: it stays.
        await fault(local, store, spec(model, 1), faults=1)
        state = await fault(local, store, spec(model, 1), faults=2)
        await asyncio.sleep(1.0)  # twice the probation: no third try
        state = await settle(local, spec(model, 1), Phase.PROGRESSING, lambda s: bool(s.reason))
        assert not simulators() and state.ready_replicas == 0

        # An admin releases it; an instance that then holds ends nothing (no probation left).
        assert local.accelerators is not None
        assert await _release(local.accelerators)
        await settle(local, spec(model, 1), Phase.READY)
        assert store.quarantines() == []


async def test_a_card_that_holds_through_its_probation_is_released(tmp_path: Path) -> None:
    model = "d" * 32
    async with deployer(tmp_path, "1", quarantine_probation_s=0.3) as (local, store):
        await fault(local, store, spec(model, 1))
        await settle(local, spec(model, 1), Phase.READY, lambda s: not store.quarantines())
        actions = [e.action for e in store.events()]
        assert actions == [AuditAction.ACCELERATOR_QUARANTINE, AuditAction.ACCELERATOR_RELEASE]


async def _release(accelerators: Accelerators) -> bool:
    return await asyncio.to_thread(accelerators.release, "local", 0, "key_admin", "fixed")
