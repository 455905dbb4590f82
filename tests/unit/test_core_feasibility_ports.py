"""Static service ports are a per-node resource: one holder per node and port."""

from walle.core import Capacity, Node, reconcile
from walle.core.plan import apply_plan
from walle.jobspec import parse_spec

GIB = 1024 ** 3


def job(name: str, count: int, port: int | None):
    data = {"name": name, "kind": "service", "count": count, "strategy": "binpack",
            "resources": {"cpu": 0.1, "memory": "16M"},
            "runtime": {"command": "/bin/true"}}
    if port:
        data["service"] = {"port": port}
    return parse_spec(data)


NODES = [Node(f"n{i}", Capacity(cpu=8, memory=16 * GIB)) for i in range(3)]


def test_instances_of_one_port_never_share_a_node_even_when_binpacking():
    plan = reconcile({"web": job("web", 3, 8080)}, (), NODES, seed=1, now=0.0)
    assert sorted(p.alloc.node for p in plan.places) == ["n0", "n1", "n2"]


def test_more_instances_than_nodes_fail_with_the_port_as_reason():
    plan = reconcile({"web": job("web", 4, 8080)}, (), NODES, seed=1, now=0.0)
    assert len(plan.places) == 3
    (failure,) = plan.failures
    assert failure.slots == (3,) and "port 8080 in use" in failure.message


def test_two_jobs_on_one_port_do_not_share_a_node_but_other_ports_do():
    plan = reconcile({"a": job("a", 2, 8080), "b": job("b", 1, 8080)}, (), NODES,
                     seed=1, now=0.0)
    assert len({p.alloc.node for p in plan.places}) == 3
    plan = reconcile({"a": job("a", 3, 8080), "c": job("c", 3, 9090)}, (), NODES,
                     seed=1, now=0.0)
    assert len(plan.places) == 6 and not plan.failures


def test_ports_survive_a_round_trip_through_apply_and_reconcile():
    jobs = {"web": job("web", 3, 8080)}
    plan = reconcile(jobs, (), NODES, seed=1, now=0.0)
    state = apply_plan((), plan)
    assert all(a.ports == (8080,) for a in state)
    assert reconcile(jobs, state, NODES, seed=2, now=1.0).is_empty
