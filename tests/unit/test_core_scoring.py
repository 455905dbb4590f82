"""Scoring plugins, table-driven: each case compares two nodes and says which one the plugin
prefers; plus the 0..100 range, which plugins are active, and the grants."""

from __future__ import annotations

import pytest

from walle.core import compute_grants
from walle.core import scoring as s
from walle.core.feasibility import compile_job
from walle.core.model import Allocation, Capacity, Grant
from walle.core.scoring import Weights, active_scorers
from walle.core.state import ClusterIndex, held_from
from walle.core.testing import GiB, make_job, make_node

NONE: frozenset[int] = frozenset()


def _alloc(job: str, slot: int, node: str, cpu=(1.0, 1.0), mem=(1, 1)) -> Allocation:
    return Allocation(job, slot, node, Capacity(cpu[0], mem[0] * GiB),
                      Capacity(cpu[1], mem[1] * GiB), "d", "r")


def _index(nodes, allocs=()):
    ix = ClusterIndex(nodes)
    for a in allocs:
        ix.reserve(ix.pos[a.node], held_from(a))
    return ix


# scorer, nodes, existing allocations, job kwargs, avoid names, preferred node, other node
CASES = [
    ("binpack prefers the fuller node", s.binpack,
     [make_node("a"), make_node("b")], [_alloc("x", 0, "a", (4, 4), (16, 16))], {}, (),
     "a", "b"),
    ("binpack prefers balanced use", s.binpack,
     [make_node("a"), make_node("b")],
     [_alloc("x", 0, "a", (2, 2), (8, 8)), _alloc("y", 0, "b", (0.1, 0.1), (16, 16))],
     {"cpu": (2, 2), "memory_gib": (1, 1)}, (), "a", "b"),
    ("spread prefers the emptier node", s.spread,
     [make_node("a"), make_node("b")], [_alloc("x", 0, "a", (4, 4), (16, 16))], {}, (),
     "b", "a"),
    ("domains prefer a zone without the job", s.domains,
     [make_node("a", zone="z1", rack="r1"), make_node("b", zone="z2", rack="r2"),
      make_node("c", zone="z1", rack="r3")],
     [_alloc("web", 0, "a")], {}, (), "b", "c"),
    ("domains then prefer another rack", s.domains,
     [make_node("a", zone="z1", rack="r1"), make_node("b", zone="z1", rack="r1"),
      make_node("c", zone="z1", rack="r2")],
     [_alloc("web", 0, "a")], {}, (), "c", "b"),
    ("anti-affinity prefers a node without the job", s.anti_affinity,
     [make_node("a"), make_node("b")], [_alloc("web", 0, "a")], {}, (), "b", "a"),
    ("data locality prefers the holder", s.data_locality,
     [make_node("a"), make_node("b", datasets=("logs",))], [], {"data": ("logs", "x")}, (),
     "b", "a"),
    ("failed node is penalised", s.failed_node,
     [make_node("a"), make_node("b")], [], {}, ("a",), "b", "a"),
    ("gpu nodes kept for gpu jobs", s.gpu_reserve,
     [make_node("a", gpus=4), make_node("b")], [], {}, (), "b", "a"),
]


@pytest.mark.parametrize(("scorer", "nodes", "allocs", "kwargs", "avoid", "better", "worse"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_scorer_prefers(scorer, nodes, allocs, kwargs, avoid, better, worse):
    ix = _index(nodes, allocs)
    job = compile_job(make_job("web", 3, **kwargs), default_strategy="binpack")
    avoid_ix = frozenset(ix.pos[n] for n in avoid)
    good, bad = (scorer(ix, job, ix.pos[n], avoid_ix) for n in (better, worse))
    assert good > bad
    assert 0.0 <= bad <= 100.0 and 0.0 <= good <= 100.0


@pytest.mark.parametrize(("kwargs", "avoid", "expected"), [
    ({}, NONE, {"resources", "domains", "anti_affinity", "gpu_reserve"}),
    ({"count": 1}, NONE, {"resources", "gpu_reserve"}),
    ({"count": 5, "kind": "batch"}, NONE, {"resources", "gpu_reserve"}),
    ({"count": 1, "strategy": "spread"}, NONE,
     {"resources", "domains", "anti_affinity", "gpu_reserve"}),
    ({"count": 1, "data": ("d",)}, NONE, {"resources", "data_locality", "gpu_reserve"}),
    ({"count": 1, "gpus": 1}, frozenset({0}), {"resources", "failed_node"}),
])
def test_active_scorers(kwargs, avoid, expected):
    count = kwargs.pop("count", 3)
    job = compile_job(make_job("web", count, **kwargs), default_strategy="binpack")
    assert {name for name, _, _ in active_scorers(job, Weights(), avoid)} == expected


def test_zero_weight_switches_a_scorer_off():
    job = compile_job(make_job("web", 3), default_strategy="binpack")
    names = {n for n, _, _ in active_scorers(job, Weights(anti_affinity=0), NONE)}
    assert "anti_affinity" not in names


# -- grants ---------------------------------------------------------------------------------
def test_grants_at_max_when_the_node_has_room():
    node = make_node("a", cpu=8, memory_gib=32)
    grants = compute_grants(node, [_alloc("web", 0, "a", (1, 2), (1, 2)),
                                   _alloc("db", 0, "a", (2, 4), (4, 8))])
    assert grants["web-0"] == Grant(100, 200, GiB, int(2 * GiB * 0.9), 2 * GiB)
    assert grants["db-0"] == Grant(200, 400, 4 * GiB, int(8 * GiB * 0.9), 8 * GiB)


@pytest.mark.parametrize(("ranges", "capacity"), [
    ([(1, 4), (1, 4), (2, 8)], 8),  # maximums 16 on 8 cores
    ([(4, 8), (4, 8)], 8),  # minimums use it all: quota falls to the minimum
    ([(0.5, 4), (0.25, 16)], 2),
])
def test_overcommitted_quota_shrinks_but_never_below_min(ranges, capacity):
    node = make_node("a", cpu=capacity, memory_gib=64)
    allocs = [_alloc(f"j{k}", 0, "a", r) for k, r in enumerate(ranges)]
    grants = compute_grants(node, allocs)
    quotas = [grants[a.key].cpu_quota_percent for a in allocs]
    assert sum(quotas) <= capacity * 100 + len(quotas)  # rounding up by <1% each
    for (lo, hi), quota in zip(ranges, quotas, strict=True):
        assert lo * 100 <= quota <= hi * 100 + 1
    # the elastic parts shrink by one common factor
    shares = [(q / 100 - lo) / (hi - lo) for (lo, hi), q in zip(ranges, quotas, strict=True)]
    assert max(shares) - min(shares) < 0.02


def test_memory_high_lowered_when_memory_overcommitted():
    node = make_node("a", cpu=64, memory_gib=10)
    a, b = _alloc("a", 0, "a", mem=(2, 10)), _alloc("b", 0, "a", mem=(2, 10))
    grants = compute_grants(node, [a, b])
    for g in grants.values():
        assert g.memory_min == 2 * GiB and g.memory_max == 10 * GiB
        assert g.memory_min <= g.memory_high < 9 * GiB
        assert g.memory_high == pytest.approx(5 * GiB, rel=0.01)  # 2 + (10-4)/16 * 8


def test_weight_proportional_to_minimum():
    node = make_node("a", cpu=64)
    grants = compute_grants(node, [_alloc("a", 0, "a", (0.5, 1)), _alloc("b", 0, "a", (4, 4))])
    assert grants["b-0"].cpu_weight == 8 * grants["a-0"].cpu_weight
