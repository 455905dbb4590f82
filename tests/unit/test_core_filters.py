"""Feasibility filters, one table row per rule: which reasons a node gets, and that the fast
check agrees with the full list."""

from __future__ import annotations

import pytest

from walle.core import reconcile
from walle.core.feasibility import compile_job, feasible, rejections, summarise
from walle.core.model import Allocation, Capacity
from walle.core.state import ClusterIndex, held_from
from walle.core.testing import GiB, make_job, make_node
from walle.jobspec.model import Constraint

C = Constraint
ALL_OK = make_node("n1", cpu=8, memory_gib=32, gpus=2, disk_gib=100, zone="z1", rack="r1",
                   labels={"ssd": "true", "arch": "amd64"})

CASES = [  # id, node, job kwargs, expected reasons
    ("fits", ALL_OK, {}, []),
    ("cpu", ALL_OK, {"cpu": (9, 9)}, ["not enough cpu"]),
    ("cpu min only counts", ALL_OK, {"cpu": (8, 64)}, []),
    ("memory", ALL_OK, {"memory_gib": (33, 33)}, ["not enough memory"]),
    ("memory min only counts", ALL_OK, {"memory_gib": (32, 500)}, []),
    ("disk", ALL_OK, {"disk_gib": 101}, ["not enough disk"]),
    ("gpus", ALL_OK, {"gpus": 3}, ["not enough gpus"]),
    ("all resources", ALL_OK, {"cpu": (9, 9), "memory_gib": (40, 40), "gpus": 3},
     ["not enough cpu", "not enough memory", "not enough gpus"]),
    ("draining", make_node("n1", state="draining"), {}, ["node draining"]),
    ("down", make_node("n1", state="down"), {}, ["node down"]),
    ("label eq", ALL_OK, {"constraints": (C("label.ssd", "eq", "true"),)}, []),
    ("label eq fails", ALL_OK, {"constraints": (C("label.ssd", "eq", "false"),)},
     ["constraint label.ssd eq false"]),
    ("missing label eq", ALL_OK, {"constraints": (C("label.gpu", "eq", "a100"),)},
     ["constraint label.gpu eq a100"]),
    ("missing label ne", ALL_OK, {"constraints": (C("label.gpu", "ne", "a100"),)}, []),
    ("ne fails", ALL_OK, {"constraints": (C("zone", "ne", "z1"),)}, ["constraint zone ne z1"]),
    ("in", ALL_OK, {"constraints": (C("rack", "in", ("r1", "r2")),)}, []),
    ("in fails", ALL_OK, {"constraints": (C("rack", "in", ("r2", "r3")),)},
     ["constraint rack in r2,r3"]),
    ("not_in fails", ALL_OK, {"constraints": (C("name", "not_in", ("n1",)),)},
     ["constraint name not_in n1"]),
    ("regex", ALL_OK, {"constraints": (C("label.arch", "regex", "^amd"),)}, []),
    ("regex fails", ALL_OK, {"constraints": (C("label.arch", "regex", "^arm"),)},
     ["constraint label.arch regex ^arm"]),
    ("two rules fail", ALL_OK, {"constraints": (C("zone", "eq", "z2"), C("rack", "eq", "r9"))},
     ["constraint zone eq z2", "constraint rack eq r9"]),
]


@pytest.mark.parametrize(("node", "kwargs", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_filter_reasons(node, kwargs, expected):
    ix = ClusterIndex([node])
    job = compile_job(make_job("web", **kwargs), default_strategy="binpack")
    assert rejections(ix, job, 0) == expected
    assert feasible(ix, job, 0) == (not expected)


def _index_with(job_name: str, nodes, on: list[str]) -> ClusterIndex:
    ix = ClusterIndex(nodes)
    for slot, name in enumerate(on):
        ix.reserve(ix.pos[name], held_from(Allocation(
            job_name, slot, name, Capacity(0.1, GiB), Capacity(0.1, GiB), "d", "r")))
    return ix


def test_distinct_hosts_rejects_a_node_holding_the_job():
    nodes = [make_node("a"), make_node("b")]
    ix = _index_with("web", nodes, ["a"])
    job = compile_job(make_job("web", 2, constraints=(C("", "distinct_hosts"),)),
                      default_strategy="binpack")
    assert rejections(ix, job, ix.pos["a"]) == ["distinct_hosts: an instance is already there"]
    assert rejections(ix, job, ix.pos["b"]) == []


@pytest.mark.parametrize(("limit", "held_in_z1", "z1_ok"), [(1, 1, False), (2, 1, True),
                                                            (2, 2, False), (1, 0, True)])
def test_max_per_zone(limit, held_in_z1, z1_ok):
    nodes = [make_node("a", zone="z1"), make_node("b", zone="z1"), make_node("c", zone="z2")]
    ix = _index_with("web", nodes, ["a", "b"][:held_in_z1])
    job = compile_job(make_job("web", 4, constraints=(C("zone", "max_per", limit),)),
                      default_strategy="binpack")
    assert feasible(ix, job, ix.pos["b"]) == z1_ok
    assert feasible(ix, job, ix.pos["c"])


@pytest.mark.parametrize(("constraint", "field"), [
    (C("colour", "eq", "red"), "attribute 'colour'"),
    (C("zone", "near", "z1"), "operator 'near'"),
    (C("zone", "max_per", 0), "max_per needs a positive integer"),
    (C("label.a", "regex", "("), "does not compile"),
    (C("zone", "eq", None), "needs a value"),
])
def test_bad_constraints_are_named(constraint, field):
    with pytest.raises(ValueError, match=r"job 'web': constraints\[0\]") as err:
        compile_job(make_job("web", constraints=(constraint,)), default_strategy="binpack")
    assert field in str(err.value)


def test_refusal_counts_every_reason_per_node():
    nodes = [make_node(f"small{k}", memory_gib=2) for k in range(7)]
    nodes += [make_node("d1", state="draining"), make_node("d2", state="draining")]
    plan = reconcile({"db": make_job("db", memory_gib=(8, 8))}, [], nodes, seed=1, now=0,
                     config=None)
    (failure,) = plan.failures
    assert failure.slots == (0,)
    assert dict(failure.reasons) == {"not enough memory": 7, "node draining": 2}
    assert failure.message == "7 nodes: not enough memory; 2 nodes: node draining"


def test_summarise_orders_by_count_then_name():
    assert summarise({"b": 1, "a": 1, "c": 3}) == "3 nodes: c; 1 node: a; 1 node: b"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"cpu": 0}, "capacity.cpu"), ({"memory_gib": 0}, "capacity.memory"),
    ({"state": "sleeping"}, "state 'sleeping'"),
])
def test_bad_nodes_are_named(kwargs, field):
    with pytest.raises(ValueError, match="node 'n1'") as err:
        make_node("n1", **kwargs)
    assert field in str(err.value)
