"""What the task-executor-manager asks for when cards are short.

A model whose deployer reports instances waiting for cards (``status_code``
``InsufficientAccelerators``) gets no further scale-up: more desired instances would only pile
up behind the ones that cannot be placed. Scale-in is left as decided. Placing instances on
cards is the deployer's; deciding replicas is :mod:`scaler.policy`'s.
"""

from __future__ import annotations

from dataclasses import replace

from domain.records import ModelRecord
from scaler.policy import Decision

WAITING_FOR_CARDS = "InsufficientAccelerators"


def hold_for_cards(record: ModelRecord, decision: Decision) -> Decision:
    """``decision``, with a scale-up held at the desired replicas while instances wait for cards."""
    if record.status_code != WAITING_FOR_CARDS or decision.replicas <= record.replicas:
        return decision
    return replace(
        decision,
        replicas=record.replicas,
        reason=f"held at {record.replicas}: instances wait for cards ({decision.reason})",
        inputs={**decision.inputs, "wanted_replicas": decision.replicas},
    )
