"""The reconciler, scenario by scenario: place, stop, migrate, update in place, replace with
max_parallel, failed re-placement, batch retries, preemption, grants, explain."""

from __future__ import annotations

from dataclasses import replace

import pytest

from walle.core import (
    PlacementConfig,
    apply_plan,
    explain,
    format_explanation,
    reconcile,
)
from walle.core.feasibility import compile_job
from walle.core.reconcile import allocation_for
from walle.core.testing import GiB, make_job, make_node
from walle.jobspec.model import Constraint


def plan_for(jobs, allocs, nodes, seed=1, **config):
    return reconcile({j.name: j for j in jobs}, allocs, nodes, seed=seed, now=10.0,
                     config=PlacementConfig(**config) if config else None)


def converge(jobs, nodes, allocs=(), seed=1):
    """Plan, apply, mark everything running: the state after the executor did its job."""
    plan = plan_for(jobs, allocs, nodes, seed)
    return tuple(replace(a, state="running") for a in apply_plan(allocs, plan)), plan


NODES = [make_node(f"n{k}", zone=f"z{k % 2}", rack=f"r{k % 3}") for k in range(4)]


def test_places_count_instances_and_then_nothing():
    allocs, plan = converge([make_job("web", 3)], NODES)
    assert sorted(p.alloc.slot for p in plan.places) == [0, 1, 2]
    assert all(p.reason == "new" and p.alloc.state == "pending" for p in plan.places)
    assert all(p.alloc.grant is not None for p in plan.places)
    assert plan_for([make_job("web", 3)], allocs, NODES).is_empty


def test_spreads_a_service_over_zones():
    allocs, _ = converge([make_job("web", 2)], NODES)
    zones = {n.name: n.zone for n in NODES}
    assert len({zones[a.node] for a in allocs}) == 2


def test_scale_down_and_removal_stop_instances():
    allocs, _ = converge([make_job("web", 3), make_job("db")], NODES)
    plan = plan_for([make_job("web", 1)], allocs, NODES)
    stopped = {(s.alloc.job, s.alloc.slot): s.reason for s in plan.stops}
    assert stopped == {("web", 1): "scaled down to 1", ("web", 2): "scaled down to 1",
                       ("db", 0): "job removed"}
    assert not plan.places


@pytest.mark.parametrize("state", ["down", "draining"])
def test_node_lost_or_draining_migrates_its_instances(state):
    allocs, _ = converge([make_job("web", 4)], NODES)
    lost = allocs[0].node
    nodes = [replace(n, state=state) if n.name == lost else n for n in NODES]
    plan = plan_for([make_job("web", 4)], allocs, nodes)
    moved = [m for m in plan.migrates]
    assert moved and all(m.old.node == lost and m.new.node != lost for m in moved)
    assert {m.reason for m in moved} == {f"node {lost} {state}"}
    assert {m.old.key for m in moved} == {a.key for a in allocs if a.node == lost}
    after = apply_plan(allocs, plan)
    assert plan_for([make_job("web", 4)], after, nodes).is_empty


def test_resource_change_updates_in_place():
    allocs, _ = converge([make_job("web", 2, cpu=(1, 1))], NODES)
    bigger = make_job("web", 2, cpu=(2, 4))
    plan = plan_for([bigger], allocs, NODES)
    assert not plan.replaces and not plan.places
    assert len(plan.updates) == 2
    for u in plan.updates:
        assert u.new.node == u.old.node and u.new.reserved.cpu == 2 and u.new.ceiling.cpu == 4
        assert u.new.spec_digest == bigger.digest()
        assert u.new.grant.cpu_quota_percent == 400
    assert plan_for([bigger], apply_plan(allocs, plan), NODES).is_empty


def test_resource_change_that_no_longer_fits_moves():
    nodes = [make_node("small", cpu=2), make_node("big", cpu=16)]
    allocs, _ = converge([make_job("web", cpu=(1, 1))], nodes[:1])
    plan = plan_for([make_job("web", cpu=(8, 8))], allocs, nodes)
    (move,) = plan.migrates
    assert (move.old.node, move.new.node) == ("small", "big")
    assert move.reason.startswith("new spec does not fit on node: not enough cpu")


def test_runtime_change_replaces_max_parallel_at_a_time():
    allocs, _ = converge([make_job("web", 4)], NODES)
    v2 = make_job("web", 4, command="/usr/bin/v2", max_parallel=2)
    plan = plan_for([v2], allocs, NODES)
    assert [r.old.slot for r in plan.replaces] == [0, 1]
    assert all(r.new.runtime_digest == v2.runtime_digest() for r in plan.replaces)
    state = apply_plan(allocs, plan)
    assert plan_for([v2], state, NODES).is_empty  # waits while the new ones are pending
    healthy = tuple(replace(a, state="running") for a in state)
    assert [r.old.slot for r in plan_for([v2], healthy, NODES).replaces] == [2, 3]


def test_failed_instance_is_replaced_away_from_its_node():
    nodes = NODES[:2]
    allocs, _ = converge([make_job("web", 1)], nodes)
    failed = replace(allocs[0], state="failed")
    plan = plan_for([make_job("web", 1)], [failed], nodes)
    (place,) = plan.places
    assert place.alloc.node != failed.node
    assert place.alloc.failed_nodes == (failed.node,)
    assert place.previous == failed and place.reason == f"failed on {failed.node}"
    assert plan_for([make_job("web", 1)], apply_plan([failed], plan), nodes).is_empty


def test_batch_gives_up_after_retries():
    job = make_job("etl", kind="batch", retries=2)
    spent = replace(converge([job], NODES)[0][0], state="failed", failed_nodes=("n1", "n2"))
    plan = plan_for([job], [spent], NODES)
    assert plan.is_empty
    assert plan.failures[0].message == "1 node: failed 3 times, retries 2"


def test_finished_batch_is_not_rerun():
    job = make_job("etl", kind="batch")
    done = replace(converge([job], NODES)[0][0], state="stopped")
    assert plan_for([job], [done], NODES).is_empty


def test_duplicate_instances_of_a_slot_are_stopped():
    allocs, _ = converge([make_job("web", 1)], NODES)
    twin = replace(allocs[0], node="n3" if allocs[0].node != "n3" else "n2")
    plan = plan_for([make_job("web", 1)], [allocs[0], twin], NODES)
    assert [s.alloc for s in plan.stops] == [max(allocs[0], twin, key=lambda a: a.node)]
    assert not plan.places


def test_preemption_evicts_the_cheapest_lower_priority_set():
    nodes = [make_node("a", cpu=4), make_node("b", cpu=4)]
    low = [make_job("low1", cpu=(2, 2), priority=10), make_job("low2", cpu=(2, 2), priority=20),
           make_job("mid", cpu=(4, 4), priority=30)]
    allocs, plan = converge(low, nodes)
    assert {p.alloc.job: p.alloc.node for p in plan.places}["mid"] in ("a", "b")
    urgent = make_job("urgent", cpu=(2, 2), priority=90)
    plan = plan_for([*low, urgent], allocs, nodes)
    assert [e.alloc.job for e in plan.evictions] == ["low1"]
    assert plan.evictions[0].by == "urgent-0"
    assert [p.alloc.job for p in plan.places] == ["urgent"]
    assert plan.failures[0].job == "low1"  # nowhere left for it, reported not dropped
    after = apply_plan(allocs, plan)
    assert plan_for([*low, urgent], after, nodes).is_empty


def test_never_preempts_equal_priority():
    nodes = [make_node("a", cpu=2)]
    allocs, _ = converge([make_job("first", cpu=(2, 2), priority=50)], nodes)
    plan = plan_for([make_job("first", cpu=(2, 2), priority=50),
                     make_job("second", cpu=(2, 2), priority=50)], allocs, nodes)
    assert not plan.evictions and not plan.places
    assert plan.failures[0].message == "1 node: not enough cpu"


def test_evicted_instance_moves_when_there_is_room():
    nodes = [make_node("a", cpu=4, labels={"fast": "yes"}), make_node("b", cpu=4)]
    low = make_job("low", cpu=(3, 3), priority=10)
    allocs, _ = converge([low], nodes[:1])
    urgent = make_job("urgent", cpu=(3, 3), priority=90,
                      constraints=(Constraint("label.fast", "eq", "yes"),))
    plan = plan_for([low, urgent], allocs, nodes)
    assert [e.alloc.node for e in plan.evictions] == ["a"]
    placed = {p.alloc.job: (p.alloc.node, p.reason) for p in plan.places}
    assert placed == {"urgent": ("a", "new"), "low": ("b", "evicted by urgent-0")}


def test_neighbour_arrival_regrants_running_instances():
    nodes = [make_node("a", cpu=4)]
    allocs, _ = converge([make_job("web", cpu=(1, 4))], nodes)
    assert allocs[0].grant.cpu_quota_percent == 400
    plan = plan_for([make_job("web", cpu=(1, 4)), make_job("db", cpu=(2, 4))], allocs, nodes)
    (regrant,) = plan.regrants
    assert regrant.new.grant.cpu_quota_percent < 400
    assert regrant.new.grant.cpu_quota_percent >= 100


def test_same_seed_same_plan_and_full_scan_finds_the_same_feasible_set():
    jobs = [make_job("web", 5, strategy="spread"), make_job("db", 2, cpu=(2, 2))]
    a, b = (plan_for(jobs, [], NODES, seed=42) for _ in range(2))
    assert a == b
    full = plan_for(jobs, [], NODES, seed=42, full_scan=True)
    assert len(full.places) == len(a.places)


def test_jobs_key_must_match_spec_name():
    with pytest.raises(ValueError, match=r"jobs\['api'\]"):
        reconcile({"api": make_job("web")}, [], NODES, seed=1, now=0)


def test_explain_lists_scores_and_reasons():
    nodes = [*NODES, make_node("tiny", memory_gib=1), make_node("off", state="down")]
    allocs, _ = converge([make_job("web", 2)], NODES)
    exp = explain(make_job("web", 3, memory_gib=(2, 2)), nodes, allocs)
    assert exp.chosen in {n.name for n in NODES}
    assert dict(exp.rejected) == {"not enough memory": 1, "node down": 1}
    best = exp.verdicts[0]
    assert best.feasible and dict(best.scores).keys() == set(exp.scorers)
    text = format_explanation(exp)
    assert "tiny" in text and "not enough memory" in text and "ANTI_AFFINITY" in text
    assert text.splitlines()[0].startswith("job web (binpack): 4 of 6 nodes feasible")


def test_explain_shows_preemption_when_nothing_fits():
    nodes = [make_node("a", cpu=2)]
    allocs, _ = converge([make_job("low", cpu=(2, 2), priority=1)], nodes)
    exp = explain(make_job("high", cpu=(2, 2), priority=99), nodes, allocs)
    assert exp.chosen is None and exp.evictions == ("low-0",)
    assert "preemption would evict: low-0" in format_explanation(exp)


def test_memory_reserved_is_the_minimum():
    nodes = [make_node("a", memory_gib=4)]
    plan = plan_for([make_job("web", 3, memory_gib=(1, 8))], [], nodes)
    assert len(plan.places) == 3
    assert all(p.alloc.reserved.memory == GiB and p.alloc.ceiling.memory == 8 * GiB
               for p in plan.places)


def test_kept_instances_keep_holding_their_port():
    from walle.jobspec.model import Discovery
    web = replace(make_job("web", 1), service=Discovery("web", port=8080))
    api = replace(make_job("api", 1), service=Discovery("api", port=8080))
    nodes = [make_node("a")]
    allocs, _ = converge([web], nodes)
    plan = plan_for([web, api], allocs, nodes)
    assert not plan.places and plan.failures[0].message == "1 node: port 8080 in use"


def test_room_left_by_a_move_is_offered_to_what_found_no_node_before():
    # db and web (same priority) both grow past what node a holds, so both must move. db is
    # tried first and finds a still holding web's old reservation; web then moves to b
    # (evicting low). The room web left on a must go to db in the same round, not to low,
    # or the next round evicts low again: applying a plan and reconciling is a fixed point.
    nodes = [make_node("a", cpu=4, memory_gib=4, zone="z2"),
             make_node("b", cpu=4, memory_gib=4, zone="z1"),
             make_node("c", cpu=2, memory_gib=4, zone="z1")]
    small = {"low": make_job("low", priority=10, cpu=(0.5, 0.5), memory_gib=(0.5, 1)),
             "web": make_job("web", priority=90, cpu=(0.5, 0.5), memory_gib=(0.5, 1)),
             "db": make_job("db", priority=90, cpu=(0.5, 0.5), memory_gib=(1, 2),
                            constraints=(Constraint("zone", "ne", "z1"),))}
    allocs = tuple(
        allocation_for(compile_job(small[job], default_strategy="spread"), 0, node,
                       (small[job].digest(), small[job].runtime_digest()), since=0.0,
                       state="running")
        for job, node in (("web", "a"), ("db", "a"), ("low", "b")))
    grown = [replace(small[name], resources=replace(small[name].resources,
                                                    cpu=replace(small[name].resources.cpu,
                                                                min=4, max=4)))
             for name in ("web", "db")] + [small["low"]]
    allocs2, plan = converge(grown, nodes, allocs)
    assert not plan.failures
    assert {a.job: a.node for a in allocs2} == {"db": "a", "web": "b", "low": "c"}
    assert [(e.alloc.job, e.by) for e in plan.evictions] == [("low", "web-0")]
    assert plan_for(grown, allocs2, nodes).is_empty
