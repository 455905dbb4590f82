"""Shedding (core/shed.py, its use in core/reconcile.py and service/shed.py): when a node is
under sustained pressure, which work leaves it, for where, how often, and what `walle plan`
shows of it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walle.adapters.consul import NodeInfo
from walle.adapters.consul.health import ClusterHealth
from walle.core import apply_plan, reconcile
from walle.core.grants import ElasticPolicy
from walle.core.model import Grant
from walle.core.shed import (
    Load,
    Measure,
    NodeSample,
    Pressure,
    ShedPolicy,
    describe_pressure,
    instance_load,
    moves_left,
    next_streaks,
    pressed,
    pressure_from_json,
    pressure_to_json,
    sustained,
)
from walle.core.testing import GiB, make_job, make_node
from walle.jobspec import SpecError, parse_spec
from walle.jobspec.encoding import spec_to_data
from walle.jobspec.model import Constraint, Placement
from walle.service.cluster import Snapshot
from walle.service.decide import Defaults, decide
from walle.service.dryrun import MOVE, dry_run
from walle.service.elastic import Reading
from walle.service.records import SlotRecord
from walle.service.shed import Shedder

NOW = 10_000.0
NODES = [make_node(f"n{k}", cpu=4, memory_gib=8) for k in range(1, 4)]


def running_on_n1(jobs):
    """Every instance of `jobs` running on n1 (placed while n1 was the only node)."""
    plan = reconcile({j.name: j for j in jobs}, [], NODES[:1], seed=1, now=NOW - 1000)
    return tuple(replace(a, state="running") for a in apply_plan([], plan))


def cpu(used, wanted=None):
    return Load(cpu_used=used, cpu_wanted=used if wanted is None else wanted)


def pressure(n1, instances, *, streak=3, others=None, moved=(), **policy):
    nodes = {"n1": NodeSample(n1, cpu_streak=streak),
             **(others if others is not None else {"n2": NodeSample(Load()),
                                                   "n3": NodeSample(cpu(1.0))})}
    return Pressure(nodes, instances, tuple(moved), ShedPolicy(**policy))


def shed(jobs, allocs, p, nodes=NODES):
    plan = reconcile({j.name: j for j in jobs}, allocs, nodes, seed=1, now=NOW, pressure=p)
    return [m for m in plan.migrates if m.shed], plan


# ----- pressure ---------------------------------------------------------------------------

def test_a_node_is_pressed_when_its_use_nears_capacity_or_its_instances_want_more():
    node, policy = NODES[0], ShedPolicy()
    assert pressed(node, cpu(3.6), policy)["cpu"]  # 90% of 4 cores
    assert not pressed(node, cpu(3.5), policy)["cpu"]
    assert pressed(node, cpu(3.0, wanted=4.5), policy) == {"cpu": True, "memory": False}
    assert pressed(node, Load(memory_used=7.5 * GiB, memory_wanted=7.5 * GiB),
                   policy) == {"cpu": False, "memory": True}


def test_pressure_is_sustained_after_samples_in_a_row_and_a_calm_sample_restarts_it():
    node, policy = NODES[0], ShedPolicy(samples=3)
    sample = None
    for load in (cpu(3.8), cpu(3.8), cpu(1.0), cpu(3.8), cpu(3.8)):
        sample = next_streaks(node, load, sample, policy)
        assert not sustained(sample, policy)
    sample = next_streaks(node, cpu(3.0, wanted=5.0), sample, policy)
    assert sample.cpu_streak == 3 and sustained(sample, policy) == ("cpu",)


def test_an_instance_pressing_below_its_ceiling_wants_more_than_it_uses():
    elastic = ElasticPolicy()
    pressing = instance_load(Measure(0.98, None, 1.0, 1 * GiB, 2.0, 2 * GiB), elastic)
    assert pressing.cpu_used == 0.98 and pressing.cpu_wanted == 1.5  # the grant + step
    at_ceiling = instance_load(Measure(0.98, None, 1.0, 1 * GiB, 1.0, 2 * GiB), elastic)
    assert at_ceiling.cpu_wanted == 0.98
    calm = instance_load(Measure(0.5, 0.2 * GiB, 1.0, 1 * GiB, 2.0, 2 * GiB), elastic)
    assert (calm.cpu_wanted, calm.memory_wanted) == (0.5, 0.2 * GiB)


# ----- what moves, and where ---------------------------------------------------------------

JOBS = [make_job("low", 2, cpu=(0.5, 2), priority=10), make_job("high", cpu=(0.5, 2),
                                                                 priority=90)]


def test_the_smallest_lowest_priority_service_that_relieves_the_node_moves_to_the_quietest():
    allocs = running_on_n1(JOBS)
    # n1 uses 3.8 of 4 cores: moving 1.0 brings it under 3.6; low-0 (0.1) would not
    loads = {"low-0": cpu(0.1), "low-1": cpu(1.0), "high-0": cpu(2.7)}
    (move,), plan = shed(JOBS, allocs, pressure(cpu(3.8), loads))
    assert (move.old.key, move.old.node, move.new.node) == ("low-1", "n1", "n2")
    assert move.reason == ("n1 under cpu pressure 3 samples (used 3.80 cores of 4.00 cores, "
                           "wanted 3.80 cores)")
    assert not plan.places and not plan.stops  # the old instance leaves once the new passes
    # none relieves alone: the largest of the lowest priority
    loads = {"low-0": cpu(0.1), "low-1": cpu(0.2), "high-0": cpu(3.6)}
    (move,), _ = shed(JOBS, allocs, pressure(cpu(3.9), loads))
    assert move.old.key == "low-1"


def test_batch_runs_and_services_pinned_to_the_node_never_move():
    pinned = make_job("pinned", cpu=(0.5, 2), priority=0,
                      constraints=(Constraint("name", "eq", "n1"),))
    batch = make_job("batch", cpu=(0.5, 2), priority=0, kind="batch")
    jobs = [pinned, batch, make_job("web", cpu=(0.5, 2), priority=60)]
    allocs = running_on_n1(jobs)
    loads = {"pinned-0": cpu(1.5), "batch-0": cpu(1.5), "web-0": cpu(0.8)}
    (move,), _ = shed(jobs, allocs, pressure(cpu(3.8), loads))
    assert move.old.key == "web-0"
    # nothing movable: no move at all
    _, plan = shed(jobs[:2], running_on_n1(jobs[:2]),
                   pressure(cpu(3.8), {"pinned-0": cpu(1.9), "batch-0": cpu(1.9)}))
    assert not plan.migrates


def test_no_move_without_a_quieter_node_that_keeps_its_headroom():
    allocs = running_on_n1(JOBS)
    loads = {"low-0": cpu(0.1), "low-1": cpu(1.0), "high-0": cpu(2.7)}
    busy = {"n2": NodeSample(cpu(2.75)), "n3": NodeSample(cpu(1.9, wanted=3.15))}
    # even low-0 (0.1): 2.85 > (0.9 - 0.2) x 4 = 2.8 on n2; n3 would want 3.25 > 0.8 x 4
    moves, plan = shed(JOBS, allocs, pressure(cpu(3.8), loads, others=busy))
    assert moves == [] and plan.is_empty
    # a node pressed once (not sustained) is no target either; an unsampled one is unknown
    once = {"n2": NodeSample(cpu(0.1), cpu_streak=1)}
    assert shed(JOBS, allocs, pressure(cpu(3.8), loads, others=once))[0] == []
    # the same node with room: the move is made
    calm = {"n2": NodeSample(cpu(0.1))}
    assert [m.new.node for m in shed(JOBS, allocs, pressure(cpu(3.8), loads, others=calm))[0]] \
        == ["n2"]


def test_a_target_must_also_be_feasible():
    allocs = running_on_n1(JOBS)
    loads = {"low-0": cpu(0.1), "low-1": cpu(1.0), "high-0": cpu(2.7)}
    nodes = [NODES[0], replace(NODES[1], state="draining"), NODES[2]]
    (move,), _ = shed(JOBS, allocs, pressure(cpu(3.8), loads), nodes)
    assert move.new.node == "n3"  # n2 is draining; n3 (1.0 + 1.0 <= 2.8) takes it


def test_not_sustained_no_move():
    allocs = running_on_n1(JOBS)
    loads = {"low-0": cpu(0.1), "low-1": cpu(1.0), "high-0": cpu(2.7)}
    assert shed(JOBS, allocs, pressure(cpu(3.8), loads, streak=2))[0] == []


# ----- the bound, and no ping-pong ------------------------------------------------------------

def two_pressed_nodes(*constraints):
    jobs = [make_job("a", cpu=(0.5, 2), constraints=constraints), make_job("b", cpu=(0.5, 2))]
    allocs = [replace(a, node="n3") if a.job == "b" else a for a in running_on_n1(jobs)]
    nodes = {"n1": NodeSample(cpu(3.8), cpu_streak=3), "n3": NodeSample(cpu(3.8), cpu_streak=4),
             "n2": NodeSample(Load())}
    return jobs, allocs, nodes


def test_at_most_moves_per_minute_cluster_wide():
    jobs, allocs, nodes = two_pressed_nodes(Constraint("name", "ne", "n2"))
    instances = {"a-0": cpu(1.0), "b-0": cpu(1.0)}
    # a cannot go to n2 (its constraint) and n3 is pressed: only b moves, from n3
    one = Pressure(nodes, instances, (), ShedPolicy(moves_per_minute=5))
    assert [m.old.key for m in shed(jobs, allocs, one)[0]] == ["b-0"]
    jobs, allocs, nodes = two_pressed_nodes()
    both = Pressure(nodes, instances, (), ShedPolicy(moves_per_minute=2))
    assert sorted(m.old.key for m in shed(jobs, allocs, both)[0]) == ["a-0", "b-0"]
    bound = replace(both, policy=ShedPolicy(moves_per_minute=1))
    assert len(shed(jobs, allocs, bound)[0]) == 1
    spent = replace(bound, moved=((NOW - 30, "x-0"),))
    assert moves_left(spent, NOW) == 0 and shed(jobs, allocs, spent)[0] == []
    aged = replace(bound, moved=((NOW - 61, "x-0"),))
    assert len(shed(jobs, allocs, aged)[0]) == 1


def test_an_instance_moved_for_pressure_stays_put_for_the_cooldown():
    allocs = running_on_n1(JOBS)
    loads = {"low-0": cpu(0.1), "low-1": cpu(1.0), "high-0": cpu(2.7)}
    p = pressure(cpu(3.8), loads, moved=((NOW - 300, "low-1"),), moves_per_minute=3)
    (move,), _ = shed(JOBS, allocs, p)
    assert move.old.key != "low-1"
    later = replace(p, moved=((NOW - 601, "low-1"),))
    assert shed(JOBS, allocs, later)[0][0].old.key == "low-1"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(0.05, 2.0), min_size=2, max_size=5),
       st.lists(st.floats(0.0, 3.9), min_size=2, max_size=2),
       st.integers(1, 3))
def test_a_move_never_presses_its_target_nor_exceeds_the_bound(uses, others, per_minute):
    """On random loads: each move leaves its target unpressed (the next sample with the
    newcomer's load does not start a streak there: no bounce back), never outruns the bound,
    and relieves the source of what the instance used."""
    jobs = [make_job(f"j{k}", cpu=(0.1, 2), priority=k % 2) for k in range(len(uses))]
    allocs = running_on_n1(jobs)
    instances = {f"j{k}-0": cpu(u) for k, u in enumerate(uses)}
    total = sum(instances.values(), Load())
    samples = {"n1": next_streaks(NODES[0], total, NodeSample(total, 5), ShedPolicy()),
               "n2": NodeSample(cpu(others[0])), "n3": NodeSample(cpu(others[1]))}
    p = Pressure(samples, instances, (), ShedPolicy(moves_per_minute=per_minute))
    moves, _ = shed(jobs, allocs, p)
    assert len(moves) <= min(per_minute, 1)  # one pressed node: at most one move off it
    if not pressed(NODES[0], total, p.policy)["cpu"]:
        assert moves == []
    nodes = {n.name: n for n in NODES}
    for m in moves:
        after = samples[m.new.node].load + instances[m.old.key]
        assert not any(pressed(nodes[m.new.node], after, p.policy).values())
        assert m.new.node != "n1" and m.old.node == "n1"


# ----- the decision path and `walle plan` ---------------------------------------------------

def snapshot(jobs, allocs):
    records = {a.key: SlotRecord(a, state_since=NOW - 500) for a in allocs}
    health = ClusterHealth(0, [NodeInfo(n.name, "", health="passing", schedulable=True)
                               for n in NODES], {})
    return Snapshot({j.name: j for j in jobs}, {}, records, {n.name: n for n in NODES}, {},
                    health, away=frozenset())


def test_walle_plan_shows_the_leaders_shed_move_from_the_published_samples():
    allocs = running_on_n1(JOBS)
    p = pressure(cpu(3.8), {"low-0": cpu(0.1), "low-1": cpu(1.0), "high-0": cpu(2.7)})
    snap = snapshot(JOBS, allocs)
    leaders = decide(snap, snap.records, NOW, seed=0, placement=Defaults().placement(),
                     pressure=p)
    published = pressure_from_json(pressure_to_json(p))
    assert published == p
    run = dry_run(snap, Defaults(), NOW, pressure=published)
    assert run.plan == leaders and [m.old.key for m in leaders.migrates] == ["low-1"]
    (slot,) = [d for job in run.jobs for d in job.slots if d.instance == "low-1"]
    assert (slot.action, slot.node) == (MOVE, "n2")
    assert slot.reason.startswith("from n1: n1 under cpu pressure 3 samples (used 3.80")
    assert describe_pressure(published, NOW) == [
        "shedding: a node pressed 3 samples in a row sheds; 1 of 1 move(s) left this minute",
        "  n1: cpu pressed 3 sample(s) (sustained): used 3.80 cores, wanted 3.80 cores"]
    # a slot a batch acts on now is left alone, shed move included
    held = decide(snap, snap.records, NOW, seed=0, placement=Defaults().placement(),
                  pressure=p, in_flight={"low-1"})
    assert held.migrates == ()


@pytest.mark.parametrize("body, field", [
    ({"nodes": []}, "pressure.nodes"),
    ({"nodes": {"n1": {"load": [1, 2, 3], "cpu_streak": 0, "memory_streak": 0}}},
     "pressure.nodes.n1.load"),
    ({"nodes": {"n1": {"load": [1, 2, 3, 4], "cpu_streak": -1, "memory_streak": 0}}},
     "pressure.nodes.n1"),
    ({"moved": [[1, 2]]}, "pressure.moved"),
    ({"policy": {"samples": 0}}, "samples"),
])
def test_a_bad_published_value_is_refused_by_name(body, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        pressure_from_json(body)


# ----- the leader's memory (service/shed.py) ------------------------------------------------

def with_grant(a, percent):
    return replace(a, grant=Grant(50, percent, 0, 1 * GiB, 2 * GiB))


def test_readings_become_streaks_only_for_fully_measured_steady_nodes():
    allocs = [with_grant(a, 150) for a in running_on_n1(JOBS)]
    nodes = {n.name: n for n in NODES}
    shedder = Shedder(ShedPolicy(samples=2))

    def reading(t, **percents):
        return Reading(t, {("n1", key.replace("_", "-")): {"cpu_percent": v,
                                                          "memory_bytes": 1 << 20}
                           for key, v in percents.items()})

    busy = dict(low_0=100, low_1=140, high_0=145)  # 3.85 cores of 4
    assert not shedder.observe(nodes, allocs, reading(1, **busy), settling=set())
    assert shedder.samples["n1"].cpu_streak == 1 and shedder.samples["n2"].load == Load()
    assert shedder.observe(nodes, allocs, reading(2, **busy), settling=set())
    assert set(shedder.pressure().instances) == {"low-0", "low-1", "high-0"}
    # an instance not measured: nothing known of n1 (its streak restarts)
    assert not shedder.observe(nodes, allocs, reading(3, low_0=100, low_1=140), set())
    assert "n1" not in shedder.samples
    # settling nodes are not sampled either
    shedder.observe(nodes, allocs, reading(4, **busy), settling={"n1"})
    assert "n1" not in shedder.samples
    assert Shedder(ShedPolicy(moves_per_minute=0)).pressure() is None


def test_a_shed_move_counts_against_the_bound_and_resamples_both_nodes():
    allocs = running_on_n1(JOBS)
    p = pressure(cpu(3.8), {"low-0": cpu(0.1), "low-1": cpu(1.0), "high-0": cpu(2.7)})
    moves, plan = shed(JOBS, allocs, p)
    shedder = Shedder(p.policy, samples=dict(p.nodes))
    shedder.moves_made(plan, NOW)
    assert shedder.moved == [(NOW, "low-1")] and set(shedder.samples) == {"n3"}
    assert moves_left(shedder.pressure(), NOW + 59) == 0
    assert moves_left(shedder.pressure(), NOW + 61) == 1


# ----- the opt-out: placement.movable ---------------------------------------------------------

def spec(**extra):
    return parse_spec({"name": "db", "kind": "service", "resources": {"cpu": "0.5-2",
                                                                       "memory": "1G"},
                       "runtime": {"command": "/usr/bin/true"}, **extra})


def test_a_job_that_is_not_movable_stays_and_the_next_candidate_goes():
    db = replace(make_job("db", cpu=(0.5, 2), priority=0), placement=Placement(movable=False))
    jobs = [db, make_job("web", cpu=(0.5, 2), priority=60)]
    allocs = running_on_n1(jobs)
    (move,), _ = shed(jobs, allocs, pressure(cpu(3.8), {"db-0": cpu(1.5), "web-0": cpu(1.0)}))
    assert move.old.key == "web-0"


def test_placement_movable_is_parsed_kept_and_checked_by_field():
    assert spec().movable and spec(placement={}).movable
    pinned = spec(placement={"movable": False})
    assert not pinned.movable
    assert parse_spec(spec_to_data(pinned)) == pinned
    assert spec().digest() == replace(spec(), placement=None).digest()  # old digests kept
    with pytest.raises(SpecError, match=r"placement\.movable"):
        spec(placement={"movable": "sometimes"})
    with pytest.raises(SpecError, match=r"placement"):
        spec(placement={"sticky": True})
