"""Priorities when cards are short: who lends to whom, how much, for how long, and the audit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.store.sqlite import SqliteModelStore
from domain.keys import AuditAction
from domain.records import Endpoint, ModelRecord, ModelStatus
from domain.store import rewrite
from scaler import LoadSnapshot, PolicyConfig, TaskExecutorManager
from scaler.preemption import Loan, plan
from tests.scaler.test_task_executor_manager import FixedSource
from tests.store.test_contract import make_record

SMALL = "DeepSeek-R1-Distill-Qwen-7B"  # 1 card per instance on Ascend
LARGE = "QwQ-32B"  # 4 cards per instance on Ascend
WAITING = "InsufficientAccelerators"


def model(
    name: str, priority: int, replicas: int, placed: int | None = None, **fields: Any
) -> ModelRecord:
    """A serving model; ``placed`` instances hold cards (all of them unless said)."""
    placed = replicas if placed is None else placed
    endpoints = [Endpoint(instance_id=f"{name}-{i}", url=f"http://h/{i}") for i in range(placed)]
    defaults = {"type": SMALL, "status": ModelStatus.ACTIVE, "min_instance": 1, "max_instance": 8,
                "status_code": WAITING if placed < replicas else ""}  # fmt: skip
    return make_record(name, priority=priority, replicas=replicas, ready_instances=placed,
                       endpoints=endpoints, **{**defaults, **fields})  # fmt: skip


def caps(loans: dict[str, Loan], *records: ModelRecord) -> dict[str, int]:
    return {r.name: loans[r.id].cap for r in records if r.id in loans}


def test_a_waiting_model_takes_the_cards_it_needs_from_the_lowest_priority_first() -> None:
    prod = model("prod", priority=10, replicas=2, placed=1, type=LARGE)  # 4 cards wait
    batch = model("batch", priority=0, replicas=5)
    spare = model("spare", priority=-5, replicas=3)
    result = plan([prod, batch, spare], {}, now=0, settle_s=60)
    # spare lends down to its minimum (2 cards), batch the other 2; never below min_instance.
    assert caps(result.loans, batch, spare) == {"spare": 1, "batch": 3}
    assert [loan.lender_name for loan in result.made] == ["spare", "batch"]
    assert all(loan.borrower_name == "prod" for loan in result.made)
    assert "lent to prod (priority 10 over -5)" in result.loans[spare.id].reason


def test_whole_instances_are_taken_even_when_they_free_more_than_needed() -> None:
    prod = model("prod", priority=1, replicas=3, placed=2)  # 1 card waits
    batch = model("batch", priority=0, replicas=3, type=LARGE)
    assert caps(plan([prod, batch], {}, now=0, settle_s=60).loans, batch) == {"batch": 2}


def test_no_loan_between_equal_priorities_other_cards_or_models_at_their_minimum() -> None:
    prod = model("prod", priority=5, replicas=2, placed=1)
    equal = model("equal", priority=5, replicas=4)
    gpus = model("gpus", priority=0, replicas=4, resource_type="nvidia.com/gpu")
    at_min = model("at-min", priority=0, replicas=1)
    deploying = model("deploying", priority=0, replicas=3, status=ModelStatus.DEPLOYING)
    result = plan([prod, equal, gpus, at_min, deploying], {}, now=0, settle_s=60)
    assert result.loans == {} and result.made == []


def test_no_more_is_taken_while_lent_cards_are_being_freed() -> None:
    prod = model("prod", priority=1, replicas=2, placed=1)
    batch = model("batch", priority=0, replicas=4)
    first = plan([prod, batch], {}, now=0, settle_s=60)
    assert caps(first.loans, batch) == {"batch": 3}
    # The lender drains; the borrower still waits: nothing more within the settle time ...
    batch.replicas = 3
    again = plan([prod, batch], first.loans, now=30, settle_s=60)
    assert caps(again.loans, batch) == {"batch": 3} and again.made == []
    # ... and after it (the freed card was not enough, e.g. not on the node it needed), more.
    later = plan([prod, batch], again.loans, now=61, settle_s=60)
    assert caps(later.loans, batch) == {"batch": 2}
    assert later.loans[batch.id].taken == 2


def test_the_loan_ends_when_the_need_has_passed() -> None:
    prod = model("prod", priority=1, replicas=2, placed=1)
    batch = model("batch", priority=0, replicas=4)
    loans = plan([prod, batch], {}, now=0, settle_s=60).loans
    # Placed on the lent card: no longer waiting, but still using it: the loan stands.
    prod = _placed(prod, replicas=2)
    assert plan([prod, batch], loans, now=10, settle_s=60).ended == []
    # Its burst over, it scales in below what it wanted: given back.
    prod = _placed(prod, replicas=1)
    result = plan([prod, batch], loans, now=20, settle_s=60)
    assert result.loans == {} and [loan.lender_name for loan in result.ended] == ["batch"]
    # A borrower deleted gives back too.
    assert plan([batch], loans, now=20, settle_s=60).ended[0].borrower_name == "prod"


async def test_the_manager_holds_the_lender_and_audits_both_moves(tmp_path: Path) -> None:
    store = SqliteModelStore(tmp_path / "aif.db")
    prod = store.create(model("prod", priority=10, replicas=2, placed=1))
    batch = store.create(model("batch", priority=0, replicas=3))
    # Load that asks batch for more than it has: its own policy would scale it up.
    busy = LoadSnapshot(ttft_p95_ms=5000, tpot_p95_ms=10, request_rate=5, in_flight=500)
    now = [0.0]
    manager = TaskExecutorManager(
        store, FixedSource(busy), interval_s=1, policy=PolicyConfig(upscale_delay_s=0),
        clock=lambda: now[0], preempt_settle_s=60,
    )  # fmt: skip
    try:
        await manager.run_once()
        lent = store.get(batch.id)
        assert lent is not None and lent.replicas == 2
        assert "lent to prod" in lent.scaling.reason
        [preempt] = [e for e in store.events(batch.id) if e.action is AuditAction.MODEL_PREEMPT]
        assert preempt.model_name == "batch" and preempt.actor == "scaler"
        assert preempt.changes == {"replicas": {"from": 3, "to": 2}, "lent_to": {"to": "prod"}}
        # prod's burst passes: it is placed, then scales in; batch gets its instance back.
        rewrite(store, prod.id, lambda r: _placed(r, replicas=1))
        now[0] = 10
        await manager.run_once()
        back = store.get(batch.id)
        assert back is not None and back.replicas > 2
        given = [e for e in store.events(batch.id) if e.action is AuditAction.MODEL_PREEMPT]
        assert given[-1].changes == {"lent_to": {"from": "prod"}}
        assert "prod no longer needs" in given[-1].reason
    finally:
        store.close()


def _placed(record: ModelRecord, replicas: int) -> ModelRecord:
    record.replicas, record.status_code = replicas, ""
    record.endpoints = [Endpoint(instance_id=f"p{i}", url=f"http://p/{i}") for i in range(replicas)]
    return record
