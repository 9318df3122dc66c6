"""Scale-up is held while a model's instances wait for cards; scale-in is not."""

from __future__ import annotations

from domain.records import ModelRecord
from scaler.placement import hold_for_cards
from scaler.policy import Decision
from tests.store.test_contract import make_record


def record(status_code: str) -> ModelRecord:
    return make_record(replicas=2, max_instance=4, status_code=status_code)


def test_no_scale_up_while_instances_wait_for_cards() -> None:
    up = Decision(4, "concurrency", {"slo_ratio": 1.5})
    held = hold_for_cards(record("InsufficientAccelerators"), up)
    assert held.replicas == 2
    assert held.inputs["wanted_replicas"] == 4 and "wait for cards" in held.reason
    assert hold_for_cards(record(""), up) == up
    down = Decision(1, "idle", {})
    assert hold_for_cards(record("InsufficientAccelerators"), down) == down
