"""Property tests of the reconciler's invariants on random small clusters and jobs, over two
rounds (plan from nothing, then a random disturbance: nodes lost or drained, jobs resized,
rewritten or re-prioritised, instances failed)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walle.core import apply_plan, reconcile
from walle.core.feasibility import NODE_OPERATORS
from walle.core.testing import GiB, make_job, make_node
from walle.jobspec.model import Constraint, Port

ZONES, RACKS = ("z1", "z2", "z3"), ("r1", "r2")
# WALLE_CORE_EXAMPLES=2000 for a longer hunt; the default keeps the unit run fast
SETTINGS = settings(max_examples=int(os.environ.get("WALLE_CORE_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def nodes(draw):
    count = draw(st.integers(1, 7))
    return [make_node(f"n{k}", cpu=draw(st.sampled_from([2, 4, 8])),
                      memory_gib=draw(st.sampled_from([4, 8, 16])),
                      gpus=draw(st.sampled_from([0, 0, 2])), zone=draw(st.sampled_from(ZONES)),
                      rack=draw(st.sampled_from(RACKS)),
                      labels={"ssd": draw(st.sampled_from(["yes", "no"]))},
                      datasets=tuple(draw(st.sets(st.sampled_from(["a", "b"])))),
                      state=draw(st.sampled_from(["ready"] * 4 + ["draining", "down"])),
                      port_range=draw(st.sampled_from([(20000, 32000), (30000, 30003)])))
            for k in range(count)]


# named ports: none, dynamic ones, a static one beside a dynamic one (core/ports.py)
PORTS = st.sampled_from([(), (), (Port("http"),), (Port("http"), Port("admin")),
                         (Port("http"), Port("metrics", 9100))])


CONSTRAINTS = st.sampled_from([
    Constraint("label.ssd", "eq", "yes"), Constraint("zone", "ne", "z1"),
    Constraint("rack", "in", ("r1",)), Constraint("zone", "not_in", ("z2", "z3")),
    Constraint("name", "regex", "^n[0-3]$"), Constraint("", "distinct_hosts"),
    Constraint("zone", "max_per", 1), Constraint("rack", "max_per", 2)])


@st.composite
def jobs(draw):
    out = {}
    for k in range(draw(st.integers(1, 4))):
        cpu = draw(st.sampled_from([0.5, 1, 2, 3]))
        mem = draw(st.sampled_from([0.5, 1, 2, 4]))
        name = f"j{k}"
        out[name] = make_job(
            name, draw(st.integers(0, 5)), cpu=(cpu, cpu * draw(st.sampled_from([1, 2]))),
            memory_gib=(mem, mem * 2), gpus=draw(st.sampled_from([0, 0, 0, 1])),
            kind=draw(st.sampled_from(["service", "batch"])),
            priority=draw(st.sampled_from([10, 50, 90])),
            strategy=draw(st.sampled_from([None, "spread", "binpack"])),
            constraints=tuple(draw(st.lists(CONSTRAINTS, max_size=2, unique=True))),
            data=tuple(draw(st.sets(st.sampled_from(["a", "b"]), max_size=1))),
            max_parallel=draw(st.integers(1, 2)), ports=draw(PORTS))
    return out


def check_invariants(jobs, nodes, before, plan):
    after = apply_plan(before, plan)
    by_name = {n.name: n for n in nodes}
    live = [a for a in after if a.live]
    # never more than count instances per job, one per slot
    per_job = Counter(a.job for a in live)
    assert all(per_job[name] <= spec.count for name, spec in jobs.items())
    assert len({(a.job, a.slot) for a in live}) == len(live)
    # never over a node's capacity for guaranteed minimums
    for name, node in by_name.items():
        here = [a for a in live if a.node == name]
        assert sum(a.reserved.cpu for a in here) <= node.capacity.cpu + 1e-9
        assert sum(a.reserved.memory for a in here) <= node.capacity.memory
        assert sum(a.reserved.gpus for a in here) <= node.capacity.gpus
        # GPUs one by one: each holder has exactly its count of the node's indices, and no
        # index has two holders (core/gpus.py)
        if node.state == "ready":
            held = [i for a in here for i in a.gpu_indices]
            assert len(held) == len(set(held)), (name, [(a.key, a.gpu_indices) for a in here])
            assert all(0 <= i < node.capacity.gpus for i in held)
            assert all(len(a.gpu_indices) == a.reserved.gpus for a in here)
            _one_holder_per_port(jobs, node, here)
    new = [p.alloc for p in plan.places] + [m.new for m in plan.migrates]
    new += [r.new for r in plan.replaces]
    for a in new:
        node = by_name[a.node]
        assert node.state == "ready"  # no placement on down or draining nodes
        for c in jobs[a.job].constraints:  # hard constraints hold
            if c.operator in NODE_OPERATORS:
                value = node.attribute(c.attribute)
                assert _holds(c, value), (c, node)
    for name, spec in jobs.items():
        mine = [a for a in live if a.job == name]
        for c in spec.constraints:
            if c.operator == "distinct_hosts":
                assert len({a.node for a in mine}) == len(mine)
            if c.operator == "max_per":
                per_value = Counter(by_name[a.node].attribute(c.attribute) for a in mine
                                    if a in new)
                assert max(per_value.values(), default=0) <= c.value
    # never preempt equal or higher priority
    for e in plan.evictions:
        by = e.by.rsplit("-", 1)[0]
        assert jobs[e.alloc.job].priority < jobs[by].priority
    return after


def _one_holder_per_port(jobs, node, here):
    """Never two holders of one port on a node, static ports included; every instance has
    a port of the node's range for each of its dynamic labels."""
    held = [p for a in here for p in a.ports + tuple(port for _, port in a.dynamic_ports)]
    assert len(held) == len(set(held)), (node.name, [(a.key, a.ports, a.dynamic_ports)
                                                     for a in here])
    low, high = node.port_range
    for a in here:
        if a.job in jobs and a.spec_digest == jobs[a.job].digest():
            assert sorted(label for label, _ in a.dynamic_ports) == \
                sorted(jobs[a.job].dynamic_labels), a
            assert all(low <= port <= high for _, port in a.dynamic_ports), (a, node)


def _holds(c, value):
    import re
    return {"eq": lambda: value == c.value, "ne": lambda: value != c.value,
            "in": lambda: value in c.value, "not_in": lambda: value not in c.value,
            "regex": lambda: value is not None and re.search(c.value, value)}[c.operator]()


def running(allocs):
    return tuple(replace(a, state="running") if a.state == "pending" else a for a in allocs)


@st.composite
def disturbance(draw, jobs, nodes, allocs):
    nodes = [replace(n, state=draw(st.sampled_from(["ready"] * 3 + ["draining", "down"])))
             if draw(st.booleans()) else n for n in nodes]
    changed = dict(jobs)
    for name, spec in jobs.items():
        action = draw(st.sampled_from(["keep", "keep", "count", "cpu", "command", "priority",
                                       "remove"]))
        if action == "count":
            changed[name] = replace(spec, count=draw(st.integers(0, 5)))
        elif action == "cpu":
            cpu = replace(spec.resources.cpu, min=draw(st.sampled_from([0.5, 1, 4])))
            cpu = replace(cpu, max=max(cpu.min, cpu.max))
            changed[name] = replace(spec, resources=replace(spec.resources, cpu=cpu))
        elif action == "command":
            changed[name] = replace(spec, runtime=replace(spec.runtime, command="/bin/v2"))
        elif action == "priority":
            changed[name] = replace(spec, priority=draw(st.sampled_from([10, 50, 90])))
        elif action == "remove":
            del changed[name]
    failed = draw(st.sets(st.integers(0, max(len(allocs) - 1, 0)), max_size=2))
    allocs = tuple(replace(a, state="failed") if k in failed else a
                   for k, a in enumerate(allocs))
    return changed, nodes, allocs


@SETTINGS
@given(data=st.data(), nodes=nodes(), jobs=jobs(), seed=st.integers(0, 2**16))
def test_invariants_over_two_rounds(data, nodes, jobs, seed):
    plan = reconcile(jobs, (), nodes, seed=seed, now=0.0)
    assert reconcile(jobs, (), nodes, seed=seed, now=0.0) == plan  # same seed, same plan
    state = check_invariants(jobs, nodes, (), plan)
    again = reconcile(jobs, state, nodes, seed=seed + 1, now=1.0)
    assert again.is_empty, again  # reconcile(apply(plan)) is empty

    jobs2, nodes2, state2 = data.draw(disturbance(jobs, nodes, running(state)))
    plan2 = reconcile(jobs2, state2, nodes2, seed=seed, now=2.0)
    assert reconcile(jobs2, state2, nodes2, seed=seed, now=2.0) == plan2
    state3 = check_invariants(jobs2, nodes2, state2, plan2)
    assert reconcile(jobs2, state3, nodes2, seed=seed + 7, now=3.0).is_empty


@SETTINGS
@given(nodes=nodes(), jobs=jobs(), seed=st.integers(0, 2**16))
def test_input_order_does_not_change_the_plan(nodes, jobs, seed):
    plan = reconcile(jobs, (), nodes, seed=seed, now=0.0)
    state = running(apply_plan((), plan))
    down = [replace(n, state="down") if k == 0 else n for k, n in enumerate(nodes)]
    forward = reconcile(jobs, state, down, seed=seed, now=1.0)
    backward = reconcile(dict(reversed(jobs.items())), state[::-1], down[::-1], seed=seed,
                         now=1.0)
    assert forward == backward


def test_cpu_requests_round_up_to_whole_millicores():
    # the capacity property counts in exact integers: 4 x 0.25 fits one core, while
    # 1/3 core reserves 334 millicores (never under-reserve), so only two fit
    node = [make_node("n", cpu=1, memory_gib=1)]
    quarter = reconcile({"w": make_job("w", 4, cpu=(0.25, 0.25), memory_gib=(0.1, 0.1))}, (),
                        node, seed=0, now=0.0)
    third = reconcile({"w": make_job("w", 3, cpu=(1 / 3, 1 / 3), memory_gib=(0.1, 0.1))}, (),
                      node, seed=0, now=0.0)
    assert (len(quarter.places), len(third.places)) == (4, 2)
    assert third.failures[0].message == "1 node: not enough cpu"
    assert quarter.places[0].alloc.reserved.memory < GiB
