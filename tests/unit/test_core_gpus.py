"""GPUs one by one (core/gpus.py): the core gives each instance specific GPU indices of its
node, never the same index to two instances, and an instance keeps its indices."""

from __future__ import annotations

from dataclasses import replace

from walle.core import apply_plan, reconcile
from walle.core.gpus import assign
from walle.core.testing import make_job, make_node


def place(jobs, nodes, allocs=(), seed=1, now=10.0):
    plan = reconcile(jobs, allocs, nodes, seed=seed, now=now)
    return plan, apply_plan(allocs, plan)


def test_two_one_gpu_jobs_on_a_two_gpu_node_get_one_index_each_and_a_third_waits():
    node = make_node("g1", gpus=2)
    jobs = {"train": make_job("train", 2, gpus=1), "infer": make_job("infer", 1, gpus=1)}
    plan, after = place(jobs, [node])
    held = {a.key: a.gpu_indices for a in after}
    assert sorted(held.values()) == [(0,), (1,)]
    assert len(held) == 2
    (failure,) = plan.failures
    assert "gpus" in failure.message


def test_an_instance_keeps_its_indices_and_a_leaver_frees_them():
    node = make_node("g1", gpus=4)
    jobs = {"a": make_job("a", 1, gpus=2), "b": make_job("b", 1, gpus=1)}
    _, first = place(jobs, [node])
    first = tuple(replace(x, state="running") for x in first)
    where = {x.key: x.gpu_indices for x in first}
    assert where == {"a-0": (0, 1), "b-0": (2,)}
    # a leaves; c arrives: b keeps 2, c gets the lowest free ones
    jobs2 = {"b": jobs["b"], "c": make_job("c", 1, gpus=3)}
    plan, after = place(jobs2, [node], first, now=20.0)
    assert [s.alloc.key for s in plan.stops] == ["a-0"]
    assert {x.key: x.gpu_indices for x in after if x.live} == {"b-0": (2,), "c-0": (0, 1, 3)}
    assert not plan.regrants or all(r.new.gpu_indices == r.old.gpu_indices
                                    for r in plan.regrants)


def test_an_instance_placed_before_indices_existed_gets_them_by_a_regrant():
    node = make_node("g1", gpus=2)
    jobs = {"a": make_job("a", 1, gpus=1)}
    _, first = place(jobs, [node])
    legacy = tuple(replace(x, state="running", gpu_indices=()) for x in first)
    plan, after = place(jobs, [node], legacy, now=20.0)
    assert [(r.old.gpu_indices, r.new.gpu_indices) for r in plan.regrants] == [((), (0,))]
    assert reconcile(jobs, after, [node], seed=1, now=30.0).is_empty


def test_a_replacement_avoids_the_gpus_of_the_instance_it_replaces_while_it_can():
    """A rolling replace keeps the old instance running until the new one passes: the new
    one takes another free GPU rather than share the old one's."""
    node = make_node("g1", gpus=2, cpu=8)
    job = make_job("a", 1, gpus=1)
    _, first = place({"a": job}, [node])
    first = tuple(replace(x, state="running") for x in first)
    new_version = make_job("a", 1, gpus=1, command="/bin/other")
    plan, _ = place({"a": new_version}, [node], first, now=20.0)
    (rep,) = plan.replaces
    assert rep.old.gpu_indices == (0,) and rep.new.gpu_indices == (1,)


def test_assign_keeps_valid_sets_and_refuses_shared_or_out_of_range_ones():
    got = assign(4, {"a": 1, "b": 2, "c": 1}, {"a": (3,), "b": (3, 0), "c": (7,)})
    assert got["a"] == (3,)
    assert len(set(got["b"] + got["c"] + got["a"])) == 4  # b's shared 3 and c's 7 reassigned
    assert got == assign(4, {"c": 1, "b": 2, "a": 1}, {"c": (7,), "b": (3, 0), "a": (3,)})
