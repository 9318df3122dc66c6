"""A scaling decision the manager writes is in the audit trail, done by ``scaler``."""

from __future__ import annotations

from pathlib import Path

from api.store.sqlite import SqliteModelStore
from domain.keys import AuditAction
from domain.records import ModelStatus
from scaler import LoadSnapshot, PolicyConfig, TaskExecutorManager
from tests.scaler.test_task_executor_manager import FixedSource, _record


async def test_a_scale_decision_is_recorded_with_its_reason(tmp_path: Path) -> None:
    store = SqliteModelStore(tmp_path / "aif.db")
    model = store.create(_record(ModelStatus.ACTIVE))
    now = [0.0]
    manager = TaskExecutorManager(
        store,
        FixedSource(LoadSnapshot(ttft_p95_ms=2000, tpot_p95_ms=10, request_rate=1)),
        interval_s=1,
        policy=PolicyConfig(upscale_delay_s=5),
        clock=lambda: now[0],
    )
    try:
        await manager.run_once()
        assert store.events(model.id) == []  # held: nothing decided, nothing recorded
        now[0] = 5
        await manager.run_once()
        [event] = store.events(model.id)
        scaled = store.get(model.id)
    finally:
        store.close()
    assert event.actor == "scaler" and event.action is AuditAction.MODEL_SCALE
    assert event.model_name == "m"
    assert event.changes == {"replicas": {"from": 1, "to": 2}}
    assert (
        scaled is not None
        and event.reason == scaled.scaling.reason == "breach: scale up to the demand"
    )
