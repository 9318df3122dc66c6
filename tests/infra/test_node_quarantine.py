"""What the nodes' state makes of quarantines on a cluster, and which nodes models avoid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain.accelerators import BY_ENGINE, Quarantine
from infra.node_inventory import ClusterCards, NodeCards
from infra.node_quarantine import (
    BY_DEVICE_PLUGIN,
    BY_NODE,
    avoided_nodes,
    fault_quarantine,
    node_signals,
)

ASCEND = "huawei.com/ascend-1980"
NOW = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
PROBATION_S = 900.0


def cluster(*nodes: NodeCards) -> ClusterCards:
    return ClusterCards(nodes=nodes)


def keyed(*quarantines: Quarantine) -> dict[tuple[str, int], Quarantine]:
    return {q.key: q for q in quarantines}


def fault(node: str, index: int, age_s: float, faults: int = 1) -> Quarantine:
    return Quarantine(node=node, index=index, resource_type=ASCEND, reason="HBM ECC error",
                      since=NOW - timedelta(seconds=age_s), faults=faults)  # fmt: skip


def test_a_card_the_device_plugin_drops_is_quarantined_and_released_when_it_is_back() -> None:
    dropped = node_signals(cluster(NodeCards("a", ASCEND, 8, 6)), {}, PROBATION_S, NOW, {})

    assert [(q.node, q.index, q.by) for q in dropped.quarantine] == [
        ("a", 6, BY_DEVICE_PLUGIN), ("a", 7, BY_DEVICE_PLUGIN)]  # fmt: skip
    assert dropped.release == ()
    stored = keyed(*dropped.quarantine)
    # Seen again: nothing new. One card back: that one is released.
    again = node_signals(cluster(NodeCards("a", ASCEND, 8, 6)), stored, PROBATION_S, NOW, {})
    assert again.quarantine == again.release == ()
    back = node_signals(cluster(NodeCards("a", ASCEND, 8, 7)), stored, PROBATION_S, NOW, {})
    assert [(q.index, why) for q, why in back.release] == [
        (6, "the device plugin advertises it again")]  # fmt: skip


def test_a_node_not_ready_has_every_card_quarantined_until_ready_through_its_probation() -> None:
    down = NodeCards("b", ASCEND, 4, 4, ready=False, condition="NodeStatusUnknown: gone")

    made = node_signals(cluster(down), {}, PROBATION_S, NOW, {"b": NOW})

    assert [(q.index, q.by) for q in made.quarantine] == [(i, BY_NODE) for i in range(4)]
    assert made.quarantine[0].reason == "node not Ready (NodeStatusUnknown: gone)"
    stored = keyed(*made.quarantine)
    up = NodeCards("b", ASCEND, 4, 4)
    soon = node_signals(cluster(up), stored, PROBATION_S, NOW + timedelta(seconds=60), {"b": NOW})
    assert soon.release == ()
    later = NOW + timedelta(seconds=PROBATION_S)
    assert len(node_signals(cluster(up), stored, PROBATION_S, later, {"b": NOW}).release) == 4
    # Until then, models keep off it.
    assert avoided_nodes(stored.values(), PROBATION_S, later, ASCEND) == {"b"}


def test_a_device_fault_goes_on_probation_then_is_released_and_a_second_one_stays() -> None:
    fresh, tried, held = (
        fault("a", 3, 60),
        fault("c", 0, PROBATION_S),
        fault("d", 0, 2 * PROBATION_S),
    )
    twice = fault("e", 1, 10 * PROBATION_S, faults=2)
    other_type = Quarantine(
        node="g", index=0, resource_type="nvidia.com/gpu", reason="Xid 79", since=NOW
    )
    stored = [fresh, tried, held, twice, other_type]

    # On probation (c, d) the node takes models again; a second fault (e) needs an admin.
    assert avoided_nodes(stored, PROBATION_S, NOW, ASCEND) == {"a", "e"}
    assert avoided_nodes(stored, 0, NOW, ASCEND) == {"a", "c", "d", "e"}
    nodes = cluster(*(NodeCards(n, ASCEND, 8, 8) for n in "acde"))
    verdict = node_signals(nodes, keyed(*stored), PROBATION_S, NOW, {})
    assert [(q.node, why) for q, why in verdict.release] == [
        ("d", "no new fault through its probation")]  # fmt: skip


def test_a_fault_takes_the_card_it_names_else_the_first_free_slot_and_counts_again() -> None:
    node = NodeCards("a", ASCEND, 8, 8)
    named = fault_quarantine(node, "a", 5, "aclrtSetDevice failed, device id=5", {})
    assert (named.index, named.by, named.faults, named.resource_type) == (5, BY_ENGINE, 1, ASCEND)

    admin = Quarantine(node="a", index=0, reason="by hand", by="key-admin", faults=2)
    unnamed = fault_quarantine(node, "a", None, "HBM ECC error", keyed(admin, named))
    assert unnamed.index == 1
    again = fault_quarantine(node, "a", 5, "NPU 5 fault", keyed(admin, named))
    assert (again.index, again.faults) == (5, 2)
    # Not a slot of the node (a device id the container remapped): the first free one.
    assert fault_quarantine(node, "a", 12, "NPU 12 fault", {}).index == 0
