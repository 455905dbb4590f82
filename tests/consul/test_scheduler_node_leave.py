"""A node that leaves the catalog (a graceful Serf leave: `systemctl restart walle-serf`, an
agent restart) is not a failed node: its instances still run. The leader holds them where they
are for the leave grace (SchedulerConfig.node_leave_grace) and keeps them if the node comes
back in time; only a node away longer loses its instances, which then move as from a dead
node. A node whose serfHealth is critical (failed) still loses its work at once
(test_scheduler_service.test_instances_on_a_dead_node_move_to_healthy_nodes).

Invariant: never two running instances of one slot (chaos finding: an agent restart made two
instances serve for 4.5 s). Fresh stand-in per test; the playbooks are replaced by
test_scheduler_service's recording executor."""

from __future__ import annotations

import pytest
import test_scheduler_service
from test_scheduler_service import (  # the recording executor and a fresh 3-node stand-in
    Clock,
    RecordingExecutor,
    records,
    register_instance,
    register_node,
    web_spec,
)

from walle.adapters.consul import ConsulApi, StateStore
from walle.service.cluster import load_snapshot
from walle.service.presence import DEFAULT_DOWN_GRACE
from walle.service.scheduler import Scheduler, SchedulerConfig

pytestmark = pytest.mark.consul

cluster = test_scheduler_service.cluster  # the fixture: a fresh stand-in with 3 nodes

GRACE = 15.0
ADDRESSES = {"node1": "10.77.250.11", "node2": "10.77.250.12", "node3": "10.77.250.13"}
ZONES = {"node1": "z1", "node2": "z2", "node3": "z3"}


def make_scheduler(api: ConsulApi, clock: Clock, name: str = "s1", grace: float = GRACE,
                   executor: RecordingExecutor | None = None, **config_args):
    """A scheduler holding the lock; `executor` shares the fake nodes of an earlier one."""
    executor = executor or RecordingExecutor(api)
    config = SchedulerConfig(name=name, inventory="unused", lock_delay=0, seed=7,
                             node_leave_grace=grace, **config_args)
    scheduler = Scheduler(api, config, executor=executor, clock=clock)
    assert scheduler.lock.acquire()
    return scheduler, executor


def web_running_on_two_nodes(api: ConsulApi, scheduler: Scheduler) -> dict[str, str]:
    """web (count 2, one static port: at most one per node, so a third node is free to take
    a lost instance) running; instance -> node."""
    StateStore(api).put_job(web_spec(count=2), 0)
    scheduler.step()
    scheduler.step()
    where = {k: a.node for k, a in records(api).items()}
    assert {a.state for a in records(api).values()} == {"running"}
    return where


def previous_node(api: ConsulApi, key: str) -> str | None:
    """Where the slot's record says its previous instance (a graceful move's) still runs."""
    previous = load_snapshot(api, StateStore(api)).records[key].previous
    return previous.node if previous else None


def leave(api: ConsulApi, node: str) -> None:
    """What a graceful Serf leave does in Consul (and the stand-in): the node, its services
    and checks leave the catalog."""
    api.client.catalog.deregister(node)


def come_back(api: ConsulApi, node: str, instances: list[str]) -> None:
    """The agent joins again and its anti-entropy registers what it still runs."""
    register_node(api, node, ADDRESSES[node], zone=ZONES[node])
    for key in instances:
        register_instance(api, node, key, "web", "passing",
                          meta={"walle_job": "web", "walle_slot": key.rsplit("-", 1)[1]})


def test_a_node_that_leaves_keeps_its_instance_through_the_grace_and_on_return(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    where = web_running_on_two_nodes(cluster, s)
    victim = where["web-1"]
    ex.placed.clear()
    leave(cluster, victim)
    left_at = clock.now

    report = s.step()
    assert ex.placed == [] and ex.stopped == []  # no second instance, nothing stopped
    assert records(cluster)["web-1"].node == victim
    assert records(cluster)["web-1"].state == "running"
    # the loop wakes when the grace ends, to move the instance if the node is still away
    assert report.next_deadline is not None
    assert left_at + GRACE <= report.next_deadline <= left_at + GRACE + 1

    clock.now += GRACE - 1
    s.step()
    assert ex.placed == [] and ex.stopped == []

    come_back(cluster, victim, ["web-1"])
    s.step()
    clock.now += 10  # well past the grace of the first leave: the node is back, it is over
    s.step()
    assert ex.placed == [] and ex.stopped == []
    assert {k: (a.node, a.state) for k, a in records(cluster).items()} == {
        k: (n, "running") for k, n in where.items()}
    assert s.step().plan.is_empty


def test_a_node_away_past_the_grace_loses_its_instance(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    where = web_running_on_two_nodes(cluster, s)
    victim = where["web-1"]
    ex.placed.clear()
    leave(cluster, victim)
    s.step()
    assert ex.placed == []

    clock.now += GRACE + 0.5
    s.step()
    moved = dict(ex.placed)
    assert list(moved) == ["web-1"] and moved["web-1"] not in (victim, where["web-0"])
    assert records(cluster)["web-1"].node == moved["web-1"]
    assert previous_node(cluster, "web-1") is None  # nothing left to stop on a lost node


def test_a_new_leader_starts_the_grace_of_a_recorded_node_it_never_saw(cluster):
    clock = Clock()
    s1, _ = make_scheduler(cluster, clock, "s1")
    where = web_running_on_two_nodes(cluster, s1)
    victim = where["web-1"]
    s1.lock.step_down()
    leave(cluster, victim)  # while no one leads

    s2, ex2 = make_scheduler(cluster, clock, "s2")
    s2.step()  # s2 never saw the node: the record names it, so its grace starts now
    assert ex2.placed == [] and ex2.stopped == []
    clock.now += GRACE - 1
    s2.step()
    assert ex2.placed == []
    clock.now += 2
    s2.step()
    assert [k for k, _ in ex2.placed] == ["web-1"]
    assert records(cluster)["web-1"].node not in (victim, where["web-0"])


def test_a_failed_node_that_then_leaves_the_catalog_gets_no_new_grace(cluster):
    """Consul reaps a failed node from the catalog later: its work was already lost (after
    the down grace, test_scheduler_node_fence), and leaving does not start a leave grace."""
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=3), 0)  # port 8080 on every node: no room
    s.step()
    s.step()
    victim = records(cluster)["web-1"].node
    register_node(cluster, victim, ADDRESSES[victim], status="critical", zone=ZONES[victim])
    s.step()
    clock.now += DEFAULT_DOWN_GRACE + 0.5
    s.step()  # lost, with nowhere to go
    leave(cluster, victim)
    s.step()
    assert records(cluster)["web-1"].node == victim
    register_node(cluster, "node4", "10.77.250.14", zone="z1")
    ex.placed.clear()
    s.step()  # room now: the lost instance is placed at once, not after a grace
    assert ex.placed == [("web-1", "node4")]


def test_a_graceful_move_keeps_its_previous_instance_while_its_node_is_away(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=2), 0)
    s.step()
    s.step()
    node = records(cluster)["web-0"].node
    cluster.client.kv.put(f"walle/nodes/{node}/drain", "drain")
    s.step()  # the new instance starts elsewhere; the old one runs until the new one passes
    assert previous_node(cluster, "web-0") == node
    leave(cluster, node)
    s.step()  # the new one passes, but the previous one cannot be stopped now
    assert records(cluster)["web-0"].state == "running"
    assert previous_node(cluster, "web-0") == node
    come_back(cluster, node, ["web-0"])
    ex.stopped.clear()
    s.step()
    # stopped now, once: the orphan reaper reads the same snapshot, where the old instance is
    # still registered, but it is the move's to stop, not an orphan
    assert ex.stopped == [("web-0", node)]
    assert previous_node(cluster, "web-0") is None


def test_a_zero_grace_moves_at_once(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock, grace=0)
    where = web_running_on_two_nodes(cluster, s)
    ex.placed.clear()
    leave(cluster, where["web-1"])
    s.step()
    assert [k for k, _ in ex.placed] == ["web-1"]
