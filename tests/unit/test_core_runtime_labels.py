"""Container jobs land only where the node can run them: the implicit runtime constraint
(walle.core.feasibility.runtime_rule) against the labels the node role sets from facts
(walle_node.runtime_labels), and the refusal reason `plan --explain` shows."""

from __future__ import annotations

import dataclasses

import pytest
from ansible_collections.walle.pool.plugins.module_utils import walle_node as wn

from walle.core.explain import explain
from walle.core.feasibility import compile_job, rejections
from walle.core.reconcile import reconcile
from walle.core.state import ClusterIndex
from walle.core.testing import make_job, make_node
from walle.jobspec.model import Runtime

VM = make_node("vm1", labels={"runtime_nspawn": "true", "runtime_lxc": "false"})
LAB = make_node("node1", labels={"runtime_nspawn": "false", "runtime_lxc": "false"})
BARE = make_node("node2")  # a node whose role predates the runtime labels


def container_job(kind: str = "nspawn", count: int = 1):
    job = make_job("boxed", count)
    return dataclasses.replace(job, runtime=Runtime(kind=kind, image="tiny:1.0",
                                                    command="/bin/sh"))


def reasons(node, job) -> list[str]:
    ix = ClusterIndex([node])
    return rejections(ix, compile_job(job, default_strategy="binpack"), 0)


@pytest.mark.parametrize(("node", "kind", "refused"), [
    (VM, "nspawn", False), (LAB, "nspawn", True), (BARE, "nspawn", True),
    (VM, "lxc", True), (LAB, "exec", False), (BARE, "exec", False),
])
def test_a_container_job_needs_the_runtime_label(node, kind, refused):
    job = container_job(kind) if kind != "exec" else make_job("plain")
    got = reasons(node, job)
    if refused:
        assert len(got) == 1 and got[0].startswith(f"runtime {kind}: node cannot run {kind}"), got
        assert f"label runtime_{kind}=true" in got[0]
    else:
        assert got == []


def test_the_plan_puts_container_instances_only_on_nodes_that_can_run_them():
    job = container_job("nspawn", count=3)
    plan = reconcile({"boxed": job}, [], [LAB, VM, BARE], seed=1, now=0.0)
    assert sorted(p.alloc.node for p in plan.places) == ["vm1", "vm1", "vm1"]


def test_an_lxc_job_with_no_node_able_to_run_lxc_is_refused_with_the_reason():
    job = container_job("lxc")
    plan = reconcile({"boxed": job}, [], [LAB, VM], seed=1, now=0.0)
    assert not plan.places
    text = " ".join(repr(f) for f in plan.failures)
    assert "2 nodes: runtime lxc: node cannot run lxc containers" in text, plan.failures
    exp = explain(job, [LAB, VM], [])  # what `walle plan --explain` prints
    assert exp.chosen is None
    assert exp.summary.startswith("2 nodes: runtime lxc: node cannot run lxc containers"), exp


def test_runtime_labels_from_facts(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    hybrid = tmp_path / "hybrid"  # a tmpfs of v1 hierarchies: no cgroup.controllers at the root
    hybrid.mkdir()
    only_nspawn = {"systemd-nspawn": "/usr/bin/systemd-nspawn"}.get
    assert wn.runtime_labels(str(v2), only_nspawn) == {"runtime_lxc": "false",
                                                       "runtime_nspawn": "true"}
    assert wn.runtime_labels(str(hybrid), only_nspawn) == {"runtime_lxc": "false",
                                                           "runtime_nspawn": "false"}
    both = {"systemd-nspawn": "/x", "lxc-start": "/y"}.get
    assert wn.runtime_labels(str(v2), both) == {"runtime_lxc": "true", "runtime_nspawn": "true"}
    (v2 / "cgroup.controllers").write_text("hugetlb\n")  # v2 without the limits' controllers
    assert wn.runtime_labels(str(v2), both)["runtime_nspawn"] == "false"


def test_runtime_labels_are_facts_that_win_over_configured_labels(tmp_path):
    node = wn.gather_node("n1", str(tmp_path), {"labels": {"runtime_nspawn": "true",
                                                           "ssd": "true"}},
                          nvidia_smi=None, node_file=str(tmp_path / "none.json"),
                          smi_output="", runtimes={"runtime_nspawn": "false",
                                                   "runtime_lxc": "false"})
    assert node["labels"] == {"runtime_lxc": "false", "runtime_nspawn": "false", "ssd": "true"}
