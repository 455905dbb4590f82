"""The leader's kept snapshot (service/state_cache.py): a step reads and decodes only what
changed, and still sees every change, its own writes and anyone else's."""

from __future__ import annotations

import json

import pytest
from test_scheduler_service import (  # noqa: F401 - cluster is a fixture
    Clock,
    cluster,
    make_scheduler,
    records,
    register_instance,
    web_spec,
)

from walle.adapters.consul import StateStore
from walle.naming import alloc_key

pytestmark = pytest.mark.consul


def test_steps_without_foreign_writes_read_the_records_once(cluster):  # noqa: F811
    clock = Clock()
    s, _ = make_scheduler(cluster, clock)
    assert StateStore(cluster).put_job(web_spec(), 0)
    s.step()  # placed: pending, written by the leader
    s.step()  # running: written by the leader
    s.step()
    assert s.reader.full_reads == 1  # the first read; the rest were the leader's own writes
    assert {r.alloc.state for r in s.reader.load().records.values()} == {"running"}
    assert {k: (a.node, a.state, a.modify_index) for k, a in records(cluster).items()} == {
        r.key: (r.alloc.node, r.alloc.state, r.modify_index)
        for r in s.reader.load().records.values()}
    s.lock.step_down()


def test_a_record_written_by_someone_else_is_read_at_the_next_step(cluster):  # noqa: F811
    clock = Clock()
    s, _ = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=1), 0)
    s.step()
    s.step()
    key = alloc_key("web", 0)
    _, entry = cluster.client.kv.get(key)
    body = json.loads(entry["Value"])
    body["reason"] = "edited by hand"
    assert cluster.client.kv.put(key, json.dumps(body), cas=entry["ModifyIndex"])
    snap = s.reader.load()
    assert snap.records["web-0"].reason == "edited by hand"
    assert s.reader.full_reads == 2
    cluster.client.kv.put(key, "not json")  # and one that cannot be read is reported
    snap = s.reader.load()
    assert "web-0" not in snap.records and [u.key for u in snap.unreadable] == [key]
    s.lock.step_down()


def test_a_changed_spec_is_parsed_again_and_a_health_change_is_seen(cluster):  # noqa: F811
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    store = StateStore(cluster)
    store.put_job(web_spec(count=1), 0)
    s.step()
    s.step()
    assert s.reader.load().jobs["web"].count == 1
    store.put_job(web_spec(count=2), store.job("web").modify_index)
    assert s.reader.load().jobs["web"].count == 2
    node = records(cluster)["web-0"].node
    register_instance(cluster, node, "web-0", "web", "critical")  # its check fails
    assert s.reader.load().instance_status(node, "web-0") == "critical"
    s.lock.step_down()


def set_check(api, node: str, check_id: str, status: str, service_id: str = "") -> None:
    """A check's status changes and nothing else (as Consul's leader writes a serfHealth
    flip, or an agent a check result): no node, service or check registered or removed."""
    check = {"Node": node, "CheckID": check_id, "Name": check_id, "Status": status}
    if service_id:
        check["ServiceID"] = service_id
    ok, answer = api.client.txn.put([{"Check": {"Verb": "set", "Check": check}}])
    assert ok, answer


def running_web(cluster, clock, count=3, **config):  # noqa: F811
    s, ex = make_scheduler(cluster, clock, **config)
    StateStore(cluster).put_job(web_spec(count=count), 0)
    s.step()
    s.step()
    assert {r.alloc.state for r in s.reader.load().records.values()} == {"running"}
    return s, ex


def test_status_changes_between_full_reads_are_seen_from_the_checks_not_passing(cluster):  # noqa: F811
    """A node that fails, a check that turns critical, and both passing again: the kept
    view must see each at once (a stale view would keep the node ready, or down), without
    reading every check again."""
    s, _ = running_web(cluster, Clock())
    node = records(cluster)["web-0"].node
    full = s.reader.health_full_reads
    set_check(cluster, node, "serfHealth", "critical")
    snap = s.reader.load()
    assert snap.nodes[node].state == "down"
    set_check(cluster, node, "serfHealth", "passing")
    set_check(cluster, node, "service:web-0", "critical", "web-0")
    snap = s.reader.load()
    assert snap.nodes[node].state == "ready"
    assert snap.instance_status(node, "web-0") == "critical"
    set_check(cluster, node, "serfHealth", "warning")  # not passing: down too, as a full read
    set_check(cluster, node, "service:web-0", "passing", "web-0")
    snap = s.reader.load()
    assert snap.nodes[node].state == "down" and snap.instance_status(node, "web-0") == "passing"
    assert s.reader.health_full_reads == full  # none of it needed every check
    # and the incremental view is what a full read says
    set_check(cluster, node, "serfHealth", "passing")
    kept = s.reader.load().health
    s.reader.forget()
    fresh = s.reader.load().health
    assert (kept.nodes, kept.instances) == (fresh.nodes, fresh.instances)
    s.lock.step_down()


def test_a_registration_or_removal_reads_every_check_again(cluster):  # noqa: F811
    """The non-passing checks cannot tell an instance that registered passing, or one that
    is gone (a stale view would keep a stopped instance registered: adopt.py would take it
    for an orphan or adopt it): those move the services table's index, and the health is
    read in full."""
    s, _ = running_web(cluster, Clock())
    node = records(cluster)["web-0"].node
    full = s.reader.health_full_reads
    cluster.client.catalog.deregister(node, service_id="web-0")
    snap = s.reader.load()
    assert snap.instance_status(node, "web-0") is None
    register_instance(cluster, node, "web-9", "web", "passing")
    snap = s.reader.load()
    assert snap.instance_status(node, "web-9") == "passing"
    cluster.client.catalog.deregister(node)  # a node that left: gone with its checks
    snap = s.reader.load()
    assert node not in snap.nodes and snap.instance_status(node, "web-9") is None
    assert s.reader.health_full_reads == full + 3
    s.lock.step_down()


def test_a_node_death_when_a_resync_is_due_is_acted_on_before_the_resync(cluster):  # noqa: F811
    """A failover is not held up by the periodic full read (issue 15: 38 s at 100,000
    instances): the step that sees a node newly failed reads no record and no check in full;
    the resync is the next step's, and the scheduler asks for that step at once."""
    clock = Clock()
    s, ex = running_web(cluster, clock, count=2, node_down_grace=0.0)
    victim = records(cluster)["web-1"].node
    reads, health_reads = s.reader.full_reads, s.reader.health_full_reads
    s.reader._read_at -= s.reader.resync  # the resync is due now
    set_check(cluster, victim, "serfHealth", "critical")
    ex.placed.clear()
    report = s.step()
    moved = dict(ex.placed)
    assert list(moved) == ["web-1"] and moved["web-1"] != victim
    assert records(cluster)["web-1"].node == moved["web-1"]
    assert (s.reader.full_reads, s.reader.health_full_reads) == (reads, health_reads)
    assert s.reader.resync_deferred and report.next_deadline <= clock.now
    s.step()  # the deferred resync: everything read again
    assert s.reader.full_reads == reads + 1 and s.reader.health_full_reads == health_reads + 1
    assert not s.reader.resync_deferred
    s.lock.step_down()
