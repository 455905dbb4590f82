"""Dynamic ports (core/ports.py): every instance gets one port of its node's range per
dynamic label, never a port another holder of the node has (static ports included), the
same ports for the same seed, and keeps them while it stays."""

from __future__ import annotations

from dataclasses import replace

from walle.adapters.consul.nodes import node_from_catalog, parse_range
from walle.core import apply_plan, reconcile
from walle.core.ports import assign
from walle.core.testing import make_job, make_node
from walle.jobspec.model import Port

HTTP = (Port("http"),)


def place(jobs, nodes, allocs=(), seed=1, now=10.0):
    plan = reconcile(jobs, allocs, nodes, seed=seed, now=now)
    return plan, apply_plan(allocs, plan)


def test_several_instances_of_a_dynamic_port_share_one_node_with_different_ports():
    node = make_node("n1")
    plan, after = place({"web": make_job("web", 3, cpu=(0.1, 0.1), ports=HTTP)}, [node])
    assert not plan.failures and {a.node for a in after} == {"n1"}
    ports = [dict(a.dynamic_ports)["http"] for a in after]
    assert len(set(ports)) == 3 and all(20000 <= p <= 32000 for p in ports)


def test_the_same_seed_gives_the_same_ports_and_an_instance_keeps_them():
    nodes = [make_node("n1"), make_node("n2")]
    jobs = {"web": make_job("web", 4, cpu=(0.1, 0.1), ports=HTTP)}
    first, state = place(jobs, nodes, seed=5)
    assert place(jobs, nodes, seed=5)[0] == first
    state = tuple(replace(a, state="running") for a in state)
    kept = {a.key: a.dynamic_ports for a in state}
    # scale up under another seed: the running ones keep their ports, nothing is re-granted
    more = {"web": replace(jobs["web"], count=6)}
    plan, after = place(more, nodes, state, seed=99, now=20.0)
    assert not plan.regrants and len(plan.places) == 2
    assert all(a.dynamic_ports == kept[a.key] for a in after if a.key in kept)
    assert reconcile(more, after, nodes, seed=7, now=30.0).is_empty


def test_an_exhausted_range_refuses_the_node_with_that_reason():
    node = make_node("n1", port_range=(30000, 30002))
    plan, after = place({"web": make_job("web", 2, cpu=(0.1, 0.1),
                                         ports=(Port("http"), Port("admin")))}, [node])
    assert len(after) == 1
    (failure,) = plan.failures
    assert failure.slots == (1,) and "port range 30000-30002 full" in failure.message


def test_a_static_port_inside_a_nodes_range_is_never_handed_out_and_refuses_when_held():
    node = make_node("n1", port_range=(9000, 9001))
    jobs = {"a": make_job("a", 1, cpu=(0.1, 0.1), ports=(Port("admin", 9000),)),
            "b": make_job("b", 2, cpu=(0.1, 0.1), ports=HTTP)}
    plan, after = place(jobs, [node])
    got = {a.key: (a.ports, a.dynamic_ports) for a in after}
    assert got["a-0"] == ((9000,), ())
    assert got["b-0"] == ((), (("http", 9001),))
    (failure,) = plan.failures  # 9000 is a's, 9001 b-0's: no room for b-1
    assert failure.slots == (1,) and "port range 9000-9001 full" in failure.message
    # a second holder of static 9000 is refused by the port, as before
    plan, _ = place({"c": make_job("c", 1, ports=(Port("x", 9000),)), **jobs}, [node], after)
    assert any("port 9000 in use" in f.message for f in plan.failures)


def test_a_static_port_held_as_someones_dynamic_port_is_in_use():
    node = make_node("n1", port_range=(9000, 9000))
    _, state = place({"b": make_job("b", 1, ports=HTTP)}, [node])
    assert state[0].dynamic_ports == (("http", 9000),)
    plan, _ = place({"b": make_job("b", 1, ports=HTTP),
                     "a": make_job("a", 1, ports=(Port("admin", 9000),))}, [node], state)
    (failure,) = plan.failures
    assert failure.job == "a" and "port 9000 in use" in failure.message


def test_a_replacement_on_the_same_node_avoids_the_ports_of_the_one_it_replaces():
    node = make_node("n1", port_range=(30000, 30001))
    job = make_job("a", 1, ports=HTTP)
    _, first = place({"a": job}, [node])
    first = tuple(replace(x, state="running") for x in first)
    plan, _ = place({"a": make_job("a", 1, ports=HTTP, command="/bin/v2")}, [node], first,
                    now=20.0)
    (rep,) = plan.replaces
    assert rep.old.dynamic_ports != rep.new.dynamic_ports


def test_assign_keeps_valid_sets_and_refuses_shared_fixed_or_partial_ones():
    got = assign((100, 110), {"a": ("http",), "b": ("http",), "c": ("http", "admin")},
                 {"a": (("http", 105),), "b": (("http", 105),), "c": (("http", 107),)},
                 fixed={101})
    assert got["a"] == (("http", 105),)  # first in key order keeps it
    assert dict(got["b"])["http"] not in (101, 105)
    assert set(dict(got["c"])) == {"http", "admin"}
    ports = [p for v in got.values() for _, p in v]
    assert len(ports) == len(set(ports)) and 101 not in ports


def test_a_nodes_range_comes_from_its_meta_and_a_bad_one_makes_it_unschedulable():
    meta = {"walle_cpu": "2", "walle_memory": "1000000"}
    plain = node_from_catalog({"Node": "n1", "Meta": meta})
    assert plain.schedulable and plain.port_range == (20000, 32000)
    own = node_from_catalog({"Node": "n1", "Meta": {**meta, "walle_port_range": "40000-40999"}})
    assert own.schedulable and own.port_range == (40000, 40999)
    bad = node_from_catalog({"Node": "n1", "Meta": {**meta, "walle_port_range": "9-x"}})
    assert not bad.schedulable and "walle_port_range" in bad.problems[0]
    assert parse_range("30000-30999") == (30000, 30999)
    for bad in ("30000", "a-b", "40000-30000", "80-90", "1-70000"):
        try:
            parse_range(bad)
        except ValueError as err:
            assert "range" in str(err)
        else:
            raise AssertionError(bad)
