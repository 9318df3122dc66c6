"""The card ledger's rules: one node per pod, distinct nodes for a group, best fit, probation."""

from __future__ import annotations

from datetime import timedelta

import pytest

from domain.accelerators import CardLedger, Quarantine, parse_local_accelerators
from domain.records import utc_now

ASCEND = "huawei.com/ascend-1980"


def test_a_multi_node_group_takes_its_cards_on_distinct_nodes() -> None:
    ledger = CardLedger({"a": 8, "b": 8, "c": 4}, ASCEND)
    group = ledger.place(ASCEND, 8, 2, ("m", "big", "i1"))
    assert group is not None
    assert sorted(node for node, _ in group.pods) == ["a", "b"]
    assert all(len(indices) == 8 for _, indices in group.pods)
    # Two nodes with 8 free are gone: a second group waits, and says why.
    assert ledger.place(ASCEND, 8, 2, ("m", "big", "i2")) is None
    assert ledger.shortage(ASCEND, 8, 2) == (
        "waiting for 8 huawei.com/ascend-1980 cards on each of 2 nodes; "
        "the largest free block is 4 (c)"
    )
    ledger.release("i1")
    assert ledger.place(ASCEND, 8, 2, ("m", "big", "i2")) is not None


def test_best_fit_keeps_large_blocks_whole_and_skips_quarantined_cards() -> None:
    ledger = CardLedger({"a": 4, "b": 2}, ASCEND)
    ledger.quarantines[("b", 0)] = Quarantine(node="b", index=0, reason="fault")
    small = ledger.place(ASCEND, 1, 1, ("m", "s", "i1"))
    assert small is not None and small.names == ["b/1"]
    assert ledger.place(ASCEND, 4, 1, ("m", "l", "i2")) is not None
    assert ledger.place(ASCEND, 1, 1, ("m", "s", "i3")) is None
    assert ledger.place("nvidia.com/gpu", 1, 1, ("m", "g", "i4")) is None
    assert "no node offers nvidia.com/gpu" in ledger.shortage("nvidia.com/gpu", 1, 1)


def test_probation_is_one_try_for_an_engine_fault_only() -> None:
    ledger = CardLedger({"a": 1}, ASCEND, probation_s=60)
    old = utc_now() - timedelta(seconds=61)
    ledger.quarantines[("a", 0)] = Quarantine(node="a", index=0, reason="fault", since=old)
    assert ledger.on_probation(("a", 0), utc_now())
    assert not ledger.on_probation(("a", 0), old + timedelta(seconds=30))
    ledger.quarantines[("a", 0)] = Quarantine(node="a", index=0, reason="r", since=old, faults=2)
    assert not ledger.on_probation(("a", 0), utc_now())
    ledger.quarantines[("a", 0)] = Quarantine(node="a", index=0, reason="r", since=old, by="key")
    assert ledger.place(ASCEND, 1, 1, ("m", "s", "i")) is None


def test_local_accelerators_setting() -> None:
    assert parse_local_accelerators("8") == {"local": 8}
    assert parse_local_accelerators('{"node-a": 8, "node-b": 4}') == {"node-a": 8, "node-b": 4}
    for bad in ("eight", "{}", '{"a": -1}', '{"a": true}', "[8]"):
        with pytest.raises(ValueError, match="AIF_LOCAL_ACCELERATORS"):
            parse_local_accelerators(bad)
