"""Each routing policy's choice, on a route built by hand."""

from __future__ import annotations

from collections import Counter

from api.chat_job_executor.admission import Gate
from api.chat_job_executor.executor import affinity_key
from api.chat_job_executor.routing import (
    Ejection,
    Instance,
    LeastLoaded,
    LeastOutstanding,
    PrefixAffinity,
    RequestInfo,
    RoundRobin,
    Route,
)
from domain.records import ModelStatus

NO_KEY = RequestInfo()


def _route(count: int, policy: str = "least-outstanding") -> Route:
    instances = tuple(
        Instance("m", f"i{n}", f"http://127.0.0.1:{9000 + n}", 8) for n in range(count)
    )
    return Route("id", "m", ModelStatus.ACTIVE, "", policy, instances, Gate())


def test_least_outstanding_picks_the_idlest_and_rotates_among_equals() -> None:
    route = _route(3)
    route.instances[0].in_flight = 2
    route.instances[1].in_flight = 1
    route.instances[2].in_flight = 1
    policy = LeastOutstanding()
    firsts = Counter(policy.order(route, NO_KEY, 0.0)[0].instance_id for _ in range(10))
    assert set(firsts) == {"i1", "i2"}  # never the busiest, and both idlest share
    assert policy.order(route, NO_KEY, 0.0)[-1].instance_id == "i0"


def test_round_robin_rotates() -> None:
    route = _route(3)
    policy = RoundRobin()
    assert [policy.order(route, NO_KEY, 0.0)[0].instance_id for _ in range(4)] == [
        "i0", "i1", "i2", "i0",
    ]  # fmt: skip


def test_load_aware_prefers_the_engine_with_the_shortest_queue() -> None:
    route = _route(3)
    route.instances[0].engine_waiting = 4
    route.instances[1].kv_usage = 0.9
    route.instances[1].engine_running = 8
    assert LeastLoaded().order(route, NO_KEY, 0.0)[0].instance_id == "i2"
    route.instances[2].engine_waiting = 10
    assert LeastLoaded().order(route, NO_KEY, 0.0)[0].instance_id == "i1"


def test_prefix_affinity_sends_one_prefix_to_one_instance_and_spreads_prefixes() -> None:
    route = _route(4, "prefix")
    policy = PrefixAffinity()
    homes = {}
    for group in range(40):
        key = RequestInfo(affinity=f"system prompt {group}".encode())
        picks = {policy.order(route, key, 0.0)[0].instance_id for _ in range(5)}
        assert len(picks) == 1  # the same prefix always goes home
        homes[group] = picks.pop()
    assert len(set(homes.values())) == 4  # and prefixes spread over every instance


def test_a_hot_prefix_spills_over_when_its_home_is_loaded() -> None:
    route = _route(4, "prefix")
    policy = PrefixAffinity()
    key = RequestInfo(affinity=b"the one hot prefix")
    home = policy.order(route, key, 0.0)[0]
    home.in_flight = 3  # the others idle: 3 is over 1.25 x the mean
    spill = policy.order(route, key, 0.0)[0]
    assert spill is not home
    home.in_flight = 0
    assert policy.order(route, key, 0.0)[0] is home


def test_the_prefix_ring_stays_put_for_keys_of_instances_that_remain() -> None:
    keys = [RequestInfo(affinity=f"prompt {n}".encode()) for n in range(200)]
    four = _route(4, "prefix")
    before = {k.affinity: PrefixAffinity().order(four, k, 0.0)[0].url for k in keys}
    three = Route("id", "m", ModelStatus.ACTIVE, "", "prefix", four.instances[:3], Gate())
    after = {k.affinity: PrefixAffinity().order(three, k, 0.0)[0].url for k in keys}
    moved = [k for k in before if before[k] != after[k]]
    assert all(before[k] == four.instances[3].url for k in moved)  # only the lost one's keys


def test_affinity_key_prefers_the_session_then_the_user_then_the_prompt() -> None:
    chat = {"messages": [{"role": "system", "content": "You are terse."}], "user": "u1"}
    assert affinity_key(chat, "s1", 16) == b"session:s1"
    assert affinity_key(chat, None, 16) == b"user:u1"
    assert affinity_key({"messages": chat["messages"]}, None, 8) == b"You are "
    assert affinity_key({"prompt": "abcdef"}, None, 3) == b"abc"
    assert affinity_key({}, None, 3) == b""


def test_ejected_instances_are_left_out_until_their_time_is_up() -> None:
    route = _route(2)
    rule = Ejection(failures=2, base_s=10, max_s=60)
    broken = route.instances[0]
    assert not broken.failed(100.0, rule)
    assert broken.failed(100.0, rule)
    assert [i.instance_id for i in LeastOutstanding().order(route, NO_KEY, 105.0)] == ["i1"]
    assert len(LeastOutstanding().order(route, NO_KEY, 110.0)) == 2
    # On probation: one more failure ejects it again, for twice as long.
    assert broken.failed(111.0, rule)
    assert broken.ejected_until == 131.0
    broken.ejected_until = 0.0
    broken.succeeded()
    assert not broken.failed(200.0, rule)


def test_when_every_instance_is_ejected_all_are_tried_anyway() -> None:
    route = _route(2)
    for instance, until in zip(route.instances, (50.0, 40.0), strict=True):
        instance.ejected_until = until
    assert [i.instance_id for i in RoundRobin().order(route, NO_KEY, 0.0)] == ["i1", "i0"]


def test_a_model_past_its_measured_capacity_is_under_pressure_with_slots_free() -> None:
    route = _route(2)  # 8 slots each (max-num-seqs), 3 within the SLO each
    route.slo_capacity = 3.0
    route.gate.in_flight = 5
    assert not route.beyond_slo_capacity() and not route.gate.full(route.capacity)
    route.gate.in_flight = 6
    assert route.beyond_slo_capacity() and not route.gate.full(route.capacity)
    route.slo_capacity = None  # not measured: only a full gate is pressure
    assert not route.beyond_slo_capacity()
