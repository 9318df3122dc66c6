"""Priorities when cards are short: a model lends its spare instances to a higher-priority one.

A model whose instances wait for cards (``status_code`` ``InsufficientAccelerators``, within its
bounds: the desired replicas never pass ``max_instance``) takes the cards it needs from models of
lower ``priority`` on the same resource type that run above their ``min_instance``: the lowest
priority first, and among equals the one with the most instances to spare. Each lender is
held at fewer instances (a :class:`Loan`), so its scale-in drains them as every scale-in does
(no request is cut) and frees their cards for the waiting instances; its own policy cannot
scale it back up over the cards while the loan stands. A loan ends when the need has passed:
the borrower is gone, no longer scaled, or back below the instances it wanted when it
borrowed, with none waiting; the lender's policy then scales it as its own load asks.

Cards are counted, not blocks: instances of the lender free ``cards per instance`` each, and
as many are taken as cover what the waiting instances need. Where the freed cards do not make
a block on one node that the borrower's pod needs, the borrower still waits after
``settle_s`` and the next pass takes more. Which instance of the lender stops is the deployer's
choice, as for any scale-in.

Pure: :func:`plan` takes the records and the standing loans, and returns the loans after the
pass; the manager applies them (:func:`cap`) and audits the new and ended ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.presets import card_shape
from domain.records import ModelRecord, ModelStatus
from scaler.placement import WAITING_FOR_CARDS

# Models that can lend: serving or scaling. A model deploying has nothing spare yet.
LENDING_STATUSES = frozenset({ModelStatus.ACTIVE, ModelStatus.UPDATING})


@dataclass(frozen=True)
class Loan:
    """``lender`` is held at ``cap`` instances for ``borrower``'s waiting ones."""

    lender_id: str
    lender_name: str
    borrower_id: str
    borrower_name: str
    cap: int
    taken: int  # instances the lender gave up, all told
    borrower_wanted: int  # the borrower's desired replicas when it last borrowed
    at: float  # when it last borrowed (seconds, the manager's clock)
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    loans: dict[str, Loan]  # by lender id
    made: list[Loan]  # loans new or widened in this pass
    ended: list[Loan]  # loans given back in this pass


def cards_per_instance(record: ModelRecord) -> int:
    per_pod, pods = card_shape(record.type, record.resource_type)
    return per_pod * pods


def waiting_instances(record: ModelRecord) -> int:
    """Instances of ``record`` that wait for cards (0 when it does not say it waits)."""
    if record.status_code != WAITING_FOR_CARDS or record.deleting:
        return 0
    return max(record.replicas - len(record.endpoints), 0)


def cap(loans: dict[str, Loan], record: ModelRecord, replicas: int) -> tuple[int, Loan | None]:
    """``replicas`` for ``record``, at most what a loan it made leaves it."""
    loan = loans.get(record.id)
    if loan is None or replicas <= loan.cap:
        return replicas, None
    return max(loan.cap, record.min_instance), loan


def plan(records: list[ModelRecord], loans: dict[str, Loan], now: float, settle_s: float) -> Plan:
    """The loans after this pass: ended where the need passed, made where instances wait."""
    by_id = {r.id: r for r in records}
    kept: dict[str, Loan] = {}
    ended: list[Loan] = []
    for lender_id, loan in loans.items():
        borrower, lender = by_id.get(loan.borrower_id), by_id.get(lender_id)
        if lender is None or lender.deleting:
            continue  # nothing to give back to
        if borrower is None or _need_passed(borrower, loan):
            ended.append(loan)
        else:
            kept[lender_id] = loan
    made: list[Loan] = []
    for borrower in sorted(records, key=lambda r: -r.priority):
        waiting = waiting_instances(borrower)
        if not waiting or _settling(kept, borrower.id, now, settle_s):
            continue
        need = waiting * cards_per_instance(borrower)
        for lender in _lenders(records, borrower, kept):
            if need <= 0:
                break
            current = kept.get(lender.id)
            held = min(lender.replicas, current.cap) if current else lender.replicas
            per_instance = cards_per_instance(lender)
            take = min(-(-need // per_instance), held - lender.min_instance)
            need -= take * per_instance
            loan = Loan(
                lender_id=lender.id, lender_name=lender.name,
                borrower_id=borrower.id, borrower_name=borrower.name,
                cap=held - take, taken=(current.taken if current else 0) + take,
                borrower_wanted=borrower.replicas, at=now,
                reason=(
                    f"{take} instance{'s' if take > 1 else ''} lent to {borrower.name} "
                    f"(priority {borrower.priority} over {lender.priority}): {waiting} of its "
                    f"instances wait for {borrower.resource_type} cards"
                ),
            )  # fmt: skip
            kept[lender.id] = loan
            made.append(loan)
    return Plan(loans=kept, made=made, ended=ended)


def _need_passed(borrower: ModelRecord, loan: Loan) -> bool:
    if borrower.deleting or borrower.status not in LENDING_STATUSES | {ModelStatus.DEPLOYING}:
        return True
    return waiting_instances(borrower) == 0 and borrower.replicas < loan.borrower_wanted


def _settling(loans: dict[str, Loan], borrower_id: str, now: float, settle_s: float) -> bool:
    """A loan for ``borrower_id`` was made less than ``settle_s`` ago: its cards are still
    being freed (the lender's instances drain), so take no more yet."""
    return any(loan.borrower_id == borrower_id and now - loan.at < settle_s
               for loan in loans.values())  # fmt: skip


def _lenders(
    records: list[ModelRecord], borrower: ModelRecord, loans: dict[str, Loan]
) -> list[ModelRecord]:
    """Who can lend to ``borrower``: lower priority, same cards, instances above the minimum
    (counting what they already lent); the lowest priority first, then the most to spare."""

    def spare(record: ModelRecord) -> int:
        loan = loans.get(record.id)
        held = min(record.replicas, loan.cap) if loan else record.replicas
        return held - record.min_instance

    candidates = [
        r for r in records
        if r.id != borrower.id and r.priority < borrower.priority and not r.deleting
        and r.resource_type == borrower.resource_type and r.status in LENDING_STATUSES
        and spare(r) > 0
        and (r.id not in loans or loans[r.id].borrower_id == borrower.id)
    ]  # fmt: skip
    return sorted(candidates, key=lambda r: (r.priority, -spare(r)))


__all__ = ["Loan", "Plan", "cap", "cards_per_instance", "plan", "waiting_instances"]
