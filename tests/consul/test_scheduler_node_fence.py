"""A failed node (serfHealth critical) may be dead, or cut off by a partition and still running
its units. Its own fence (roles/node walle-fence) stops them after the fence time; the leader
holds the node's instances where they are for the down grace (SchedulerConfig.node_down_grace,
at least the fence + a margin) and only then places them elsewhere. A node back within the
grace whose fence fired gets its instances started again where they are.

Invariant: never two running instances of one slot (chaos, partitions: before fencing the
leader re-placed a cut-off node's work at once while the node kept running it, and after the
heal both copies served). Fresh stand-in per test; the playbooks are replaced by
test_scheduler_service's recording executor (its fake nodes keep manifests and units)."""

from __future__ import annotations

import pytest
import test_scheduler_service
from test_scheduler_node_leave import ADDRESSES, GRACE, web_running_on_two_nodes
from test_scheduler_node_leave import make_scheduler as leave_grace_scheduler
from test_scheduler_service import (  # the recording executor and a fresh 3-node stand-in
    Clock,
    RecordingExecutor,
    cron_spec,
    records,
    register_node,
    web_spec,
)

from walle.adapters.consul import ConsulApi, StateStore
from walle.cli.main import build_parser
from walle.cli.scheduler import scheduler_config
from walle.naming import service_unit, timer_unit
from walle.service.presence import DEFAULT_DOWN_GRACE, DEFAULT_FENCE_AFTER

pytestmark = pytest.mark.consul

cluster = test_scheduler_service.cluster  # the fixture: a fresh stand-in with 3 nodes


def make_scheduler(api: ConsulApi, clock: Clock, name: str = "s1",
                   executor: RecordingExecutor | None = None):
    """A scheduler with a down grace of GRACE s (and the leave grace, also GRACE)."""
    return leave_grace_scheduler(api, clock, name, executor=executor, node_down_grace=GRACE)


def fail(api: ConsulApi, node: str, status: str = "critical") -> None:
    """Serf's verdict in Consul: the node's serfHealth check goes critical (or passes again)."""
    register_node(api, node, ADDRESSES[node], status=status)


def fence(ex: RecordingExecutor, node: str) -> None:
    """What walle-fence does on the cut-off node: every Walle unit stopped; the manifests stay
    (the fence removes nothing), and a stopped service unit is unloaded."""
    for iid, kind in ex.on_node.get(node, {}).items():
        job, _, slot = iid.rpartition("-")
        unit = (timer_unit if kind == "cron" else service_unit)(job, int(slot))
        ex.units[unit] = {"ActiveState": "inactive"}


def web_and_cron_running(api: ConsulApi, clock: Clock):
    """A scheduler with web (count 2) and a cron job running: (scheduler, executor, where)."""
    s, ex = make_scheduler(api, clock)
    StateStore(api).put_job(web_spec(count=2), 0)
    StateStore(api).put_job(cron_spec(), 0)
    s.step()
    s.step()
    return s, ex, {k: a.node for k, a in records(api).items()}


def test_a_failed_nodes_instance_moves_only_after_the_down_grace(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    victim = web_running_on_two_nodes(cluster, s)["web-1"]  # a third node stays free
    ex.placed.clear()
    fail(cluster, victim)
    failed_at = clock.now

    report = s.step()
    assert ex.placed == [] and ex.stopped == []  # not re-placed at once: it may still run
    assert records(cluster)["web-1"].node == victim
    # the loop wakes when the grace ends, to move the instance if the node is still failed
    assert failed_at + GRACE <= report.next_deadline <= failed_at + GRACE + 1

    clock.now = failed_at + GRACE - 0.5
    s.step()
    assert ex.placed == []  # still within the grace: the node's fence may not have fired

    clock.now = failed_at + GRACE + 0.5
    s.step()
    moved = dict(ex.placed)
    assert list(moved) == ["web-1"] and moved["web-1"] != victim
    assert records(cluster)["web-1"].node == moved["web-1"]


def test_a_node_back_within_the_grace_after_its_fence_fired_runs_its_instances_again(cluster):
    """A partition longer than the fence but shorter than the down grace: the node stopped
    its units; the leader never moved them. When it is back they start again where they
    are, and nothing is placed anywhere else."""
    clock = Clock()
    s, ex, where = web_and_cron_running(cluster, clock)
    victim = where["web-1"]
    fail(cluster, victim)
    s.step()
    clock.now += DEFAULT_FENCE_AFTER + 1  # the fence fired on the cut-off node
    fence(ex, victim)
    s.step()
    ex.placed.clear()
    fail(cluster, victim, "passing")  # healed within the grace
    s.step()
    again = [k for k, node in where.items() if node == victim]
    assert sorted(ex.placed) == sorted((k, victim) for k in again)
    assert {k: a.node for k, a in records(cluster).items()} == where
    assert {a.state for a in records(cluster).values()} == {"running"}


def test_an_untouched_node_back_within_the_grace_is_left_as_it_is(cluster):
    """A short partition (shorter than the fence): its units still run; nothing is placed."""
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    victim = web_running_on_two_nodes(cluster, s)["web-1"]
    fail(cluster, victim)
    s.step()
    ex.placed.clear()
    clock.now += 3
    fail(cluster, victim, "passing")
    s.step()
    clock.now += GRACE
    s.step()
    assert ex.placed == [] and ex.stopped == []
    assert records(cluster)["web-1"].node == victim


def test_a_new_leader_counts_the_grace_from_when_it_first_sees_the_node_failed(cluster):
    clock = Clock()
    s1, ex = make_scheduler(cluster, clock, "s1")
    victim = web_running_on_two_nodes(cluster, s1)["web-1"]
    fail(cluster, victim)
    s1.step()
    clock.now += GRACE - 2
    s1.lock.step_down()

    s2, ex2 = make_scheduler(cluster, clock, "s2", executor=ex)
    ex.placed.clear()
    s2.step()  # s2 does not know since when the node is failed: its own grace starts
    clock.now += GRACE - 1
    s2.step()
    assert ex.placed == []
    clock.now += 2
    s2.step()
    assert [k for k, _ in ex.placed] == ["web-1"]


def test_the_scheduler_refuses_a_grace_shorter_than_the_nodes_fence():
    base = ["scheduler", "run", "--inventory", "/etc/walle/inventory.yml"]
    config = scheduler_config(build_parser().parse_args(base))
    assert config.node_down_grace == DEFAULT_DOWN_GRACE == DEFAULT_FENCE_AFTER + 5
    for flags in (["--node-down-grace", "12"], ["--node-leave-grace", "5"],
                  ["--node-fence-after", "30"]):
        with pytest.raises(ValueError, match="shorter than the nodes' fence"):
            scheduler_config(build_parser().parse_args(base + flags))
    ok = scheduler_config(build_parser().parse_args(
        base + ["--node-fence-after", "20", "--node-down-grace", "24",
                "--node-leave-grace", "30"]))
    assert ok.node_down_grace == 24
    # nodes without a fence (0): any grace, 0 included (a dead node's work moves at once)
    assert scheduler_config(build_parser().parse_args(
        base + ["--node-fence-after", "0", "--node-down-grace", "0"])).node_down_grace == 0


def test_after_a_consul_outage_every_node_is_listed_and_fenced_instances_run_again(
        cluster, monkeypatch):
    """Consul itself out for longer than the fence (every node lost it, none read as down):
    each node's fence stopped its units. The leader, whose snapshot took that long, lists
    every node once and starts what its records put there again."""
    clock = Clock()
    s, ex, where = web_and_cron_running(cluster, clock)
    for node in ADDRESSES:
        fence(ex, node)
    real_load = s.reader.load

    def slow_load():  # Consul answered only after its outage (the client retries)
        clock.now += DEFAULT_FENCE_AFTER + 2
        return real_load()
    monkeypatch.setattr(s.reader, "load", slow_load)
    ex.listed.clear()
    ex.placed.clear()
    s.step()
    assert ex.listed == [sorted(ADDRESSES)]
    assert sorted(ex.placed) == sorted(where.items())
    assert {k: a.node for k, a in records(cluster).items()} == where


def test_a_placement_that_failed_on_a_node_then_cut_off_waits_for_the_grace_too(cluster):
    """place.yml lost the node mid-run (the unit may have started before the cut): the slot's
    record is failed, but the node may run it. It moves only after the down grace."""
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    ex.fail_nodes = set(ADDRESSES)
    StateStore(cluster).put_job(web_spec(count=1), 0)
    s.step()
    (record,) = records(cluster).values()
    assert record.state == "failed"
    ex.fail_nodes.clear()
    ex.placed.clear()
    fail(cluster, record.node)
    s.step()
    clock.now += GRACE - 1
    s.step()
    assert ex.placed == []
    clock.now += 2
    s.step()
    assert [k for k, _ in ex.placed] == ["web-0"] and ex.placed[0][1] != record.node


def test_a_node_that_failed_and_came_back_between_two_steps_is_listed(cluster):
    """The leader was inside a long playbook while the node died, rebooted (its units not
    running) and rejoined: no snapshot read it down, but the health watch saw it failed."""
    clock = Clock()
    s, ex, where = web_and_cron_running(cluster, clock)
    victim = where["web-1"]
    fail(cluster, victim)
    s._fetch_health(0, None)  # the watch's read while the step is busy
    fence(ex, victim)  # rebooted: nothing runs
    fail(cluster, victim, "passing")
    ex.listed.clear()
    ex.placed.clear()
    s.step()
    assert ex.listed == [[victim]]
    again = [k for k, node in where.items() if node == victim]
    assert sorted(ex.placed) == sorted((k, victim) for k in again)
