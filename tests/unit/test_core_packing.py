"""Packing order: a round is planned with cpu-heavy and memory-heavy work interleaved, and
in priority order only when something does not fit."""

from __future__ import annotations

from walle.core import PlacementConfig, apply_plan, reconcile
from walle.core.testing import make_job, make_node

PRIORITY_ORDER = PlacementConfig(packing_order=False)


def nodes_used(plan) -> int:
    return len({p.alloc.node for p in plan.places})


def test_interleaving_packs_memory_heavy_work_beside_cpu_heavy_work():
    # 12 cores / 54 GiB fit two 8-core / 32 GiB nodes only when each holds both shapes;
    # placed by priority, the cpu-heavy job fills one node's cpu first and strands its
    # memory, so the memory-heavy job needs a third node (both batch: no spreading)
    nodes = [make_node(f"n{k}", cpu=8, memory_gib=32) for k in range(4)]
    jobs = {"web": make_job("web", 6, cpu=(2, 2), memory_gib=(1, 1), kind="batch",
                            priority=80),
            "etl": make_job("etl", 4, cpu=(0.5, 0.5), memory_gib=(12, 12), kind="batch",
                            priority=10)}
    packed = reconcile(jobs, (), nodes, seed=1, now=0.0)
    by_priority = reconcile(jobs, (), nodes, seed=1, now=0.0, config=PRIORITY_ORDER)
    assert len(packed.places) == len(by_priority.places) == 10
    assert not packed.failures
    assert nodes_used(packed) == 2 < nodes_used(by_priority)
    assert reconcile(jobs, apply_plan((), packed), nodes, seed=2, now=1.0).is_empty


def test_when_room_is_short_priority_decides_not_packing_order():
    # packing order would place the cpu-heavy low-priority batch first and leave no memory
    # for the high-priority service; the round falls back to priority order
    nodes = [make_node("n", cpu=4, memory_gib=8)]
    jobs = {"api": make_job("api", 1, cpu=(1, 1), memory_gib=(6, 6), priority=90),
            "crunch": make_job("crunch", 1, cpu=(3, 3), memory_gib=(4, 4), kind="batch",
                               priority=10)}
    plan = reconcile(jobs, (), nodes, seed=3, now=0.0)
    assert [p.alloc.job for p in plan.places] == ["api"]
    assert [(f.job, f.message) for f in plan.failures] == [("crunch", "1 node: not enough memory")]
    assert plan == reconcile(jobs, (), nodes, seed=3, now=0.0, config=PRIORITY_ORDER)


def test_packing_order_never_evicts_when_everything_fits():
    nodes = [make_node(f"n{k}", cpu=4, memory_gib=8) for k in range(2)]
    low = {"old": make_job("old", 1, cpu=(3, 3), memory_gib=(2, 2), priority=10)}
    state = apply_plan((), reconcile(low, (), nodes, seed=0, now=0.0))
    jobs = {**low, "new": make_job("new", 1, cpu=(3, 3), memory_gib=(2, 2), priority=90)}
    plan = reconcile(jobs, state, nodes, seed=0, now=1.0)
    assert not plan.evictions and [p.alloc.job for p in plan.places] == ["new"]
