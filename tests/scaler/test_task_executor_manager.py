"""The task-executor-manager's loop writes its decisions to the store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from api.store.sqlite import SqliteModelStore
from domain.records import ModelRecord, ModelStatus, Pvc, Slo
from scaler import LoadSnapshot, PolicyConfig, TaskExecutorManager


class FixedSource:
    def __init__(self, snapshot: LoadSnapshot | None) -> None:
        self.snapshot = snapshot
        self.fetched: list[str] = []
        self._fetch = asyncio.Event()

    async def fetch(self, record: ModelRecord) -> LoadSnapshot | None:
        self.fetched.append(record.name)
        self._fetch.set()
        return self.snapshot

    async def fetches(self, count: int, timeout_s: float = 5.0) -> None:
        """Until ``count`` fetches were made in all."""
        async with asyncio.timeout(timeout_s):
            while len(self.fetched) < count:
                self._fetch.clear()
                await self._fetch.wait()

    async def close(self) -> None:
        pass


def _record(status: ModelStatus, name: str = "m") -> ModelRecord:
    return ModelRecord(
        name=name, type="QwQ-32B", resource_type="huawei.com/ascend-1980",
        max_instance=4, min_instance=1, replicas=1, ready_instances=1, status=status,
        pvc=Pvc(name="release-models", path="Qwen/QwQ-32B"),
        slo=Slo(target_time_to_first_token_p95=1000, target_time_per_output_token_p95=20),
    )  # fmt: skip


async def test_breach_raises_desired_replicas(tmp_path: Path) -> None:
    store = SqliteModelStore(tmp_path / "aif.db")
    active = store.create(_record(ModelStatus.ACTIVE))
    failed = store.create(_record(ModelStatus.FAILED, name="other"))
    now = [0.0]
    changes: list[int] = []
    manager = TaskExecutorManager(
        store,
        FixedSource(LoadSnapshot(ttft_p95_ms=2000, tpot_p95_ms=10, request_rate=1)),
        interval_s=1,
        policy=PolicyConfig(upscale_delay_s=5),
        clock=lambda: now[0],
        on_change=lambda: changes.append(1),
    )
    await manager.run_once()
    assert store.get(active.id).replicas == 1  # type: ignore[union-attr]
    now[0] = 5
    await manager.run_once()
    scaled = store.get(active.id)
    assert scaled is not None
    assert scaled.replicas == 2
    assert scaled.status is ModelStatus.UPDATING
    assert scaled.generation == active.generation + 1
    assert (scaled.scaling.from_replicas, scaled.scaling.to_replicas) == (1, 2)
    assert scaled.scaling.reason == decision_reason(scaled)
    assert scaled.scaling.inputs["ttft_p95_ms"] == 2000
    assert scaled.scaling.decided_at is not None
    assert changes == [1]
    assert store.get(failed.id).replicas == 1  # type: ignore[union-attr]
    store.close()


def decision_reason(record: ModelRecord) -> str:
    assert record.scaling.reason
    return record.scaling.reason


async def test_the_manager_keeps_deciding_while_a_model_is_updating(tmp_path: Path) -> None:
    store = SqliteModelStore(tmp_path / "aif.db")
    updating = store.create(_record(ModelStatus.UPDATING))
    now = [0.0]
    slow = LoadSnapshot(ttft_p95_ms=2000, tpot_p95_ms=10, request_rate=1)
    manager = TaskExecutorManager(
        store, FixedSource(slow), interval_s=1,
        policy=PolicyConfig(upscale_delay_s=5), clock=lambda: now[0],
    )  # fmt: skip
    await manager.run_once()
    now[0] = 5
    await manager.run_once()
    assert store.get(updating.id).replicas == 2  # type: ignore[union-attr]
    store.close()


async def test_unreadable_metrics_change_nothing(tmp_path: Path) -> None:
    store = SqliteModelStore(tmp_path / "aif.db")
    active = store.create(_record(ModelStatus.ACTIVE))
    source = FixedSource(None)
    manager = TaskExecutorManager(store, source, interval_s=1, clock=lambda: 1000.0)
    await manager.run_once()
    await manager.run_once()
    assert source.fetched == ["m", "m"]
    assert store.get(active.id).revision == active.revision  # type: ignore[union-attr]
    store.close()


async def test_a_model_at_capacity_is_decided_for_soon_not_at_the_next_interval(
    tmp_path: Path,
) -> None:
    store = SqliteModelStore(tmp_path / "aif.db")
    pressed = store.create(_record(ModelStatus.ACTIVE, name="pressed"))
    store.create(_record(ModelStatus.ACTIVE, name="calm"))
    source = FixedSource(LoadSnapshot(request_rate=1, in_flight=1))
    manager = TaskExecutorManager(store, source, interval_s=60, pressure_pass_s=0.05)
    await manager.start()
    try:
        await source.fetches(2)  # the first pass: every model
        source.snapshot = LoadSnapshot(request_rate=5, in_flight=128, queued=200)  # a burst
        began = time.monotonic()
        for _ in range(10):  # every waiting request reports it
            manager.nudge("pressed")
        await source.fetches(3)
        assert time.monotonic() - began < 30  # long before the 60 s interval
        assert source.fetched[2] == "pressed"
        await asyncio.sleep(0.3)
        assert len(source.fetched) == 3  # ten nudges, one pass
        scaled = store.get(pressed.id)
        assert scaled is not None and scaled.replicas > 1
        manager.nudge("pressed")
        await source.fetches(4)
    finally:
        await manager.stop()
    store.close()


async def test_without_pressure_passes_nudges_change_nothing(tmp_path: Path) -> None:
    store = SqliteModelStore(tmp_path / "aif.db")
    store.create(_record(ModelStatus.ACTIVE))
    source = FixedSource(LoadSnapshot(request_rate=1, in_flight=1))
    manager = TaskExecutorManager(store, source, interval_s=60, pressure_pass_s=0)
    await manager.start()
    try:
        await source.fetches(1)
        manager.nudge("m")
        await asyncio.sleep(0.3)
        assert source.fetched == ["m"]
    finally:
        await manager.stop()
    store.close()


async def test_the_capacity_learnt_is_kept_with_the_model_and_seeds_its_peers(
    tmp_path: Path,
) -> None:
    """Engines that queue inside at 8 admitted per instance (running 4): the manager stores
    4 per instance in ``scaling.capacity``, a restarted manager starts from it, and a new model
    of the same preset on the same resource type is sized by it before it has samples."""
    store = SqliteModelStore(tmp_path / "aif.db")
    model = store.create(_record(ModelStatus.ACTIVE))
    now = [0.0]
    full = LoadSnapshot(ttft_p95_ms=500, tpot_p95_ms=10, request_rate=4, in_flight=8,
                        engine_waiting=4)  # fmt: skip
    manager = TaskExecutorManager(store, FixedSource(full), interval_s=1, clock=lambda: now[0])
    await manager.run_once()
    stored = store.get(model.id)
    assert stored is not None
    capacity = stored.scaling.capacity
    assert (capacity.concurrency_per_instance, capacity.source) == (4.0, "learnt")
    assert capacity.samples == 1 and capacity.measured_at is not None

    peer = store.create(_record(ModelStatus.ACTIVE, name="peer"))
    calm = LoadSnapshot(ttft_p95_ms=None, tpot_p95_ms=None, request_rate=4, in_flight=12)
    fresh = TaskExecutorManager(store, FixedSource(calm), interval_s=1, clock=lambda: now[0])
    now[0] = 1
    await fresh.run_once()
    # 12 in flight on one instance over the 4 learnt (not QwQ-32B's max-num-seqs, 128):
    # both models scale to the maximum of 4 (ceil(12 / (4 * 0.7)) = 5).
    assert store.get(model.id).replicas == 4  # type: ignore[union-attr]
    assert store.get(peer.id).replicas == 4  # type: ignore[union-attr]
    assert store.get(peer.id).scaling.capacity.source == ""  # type: ignore[union-attr]
    store.close()
