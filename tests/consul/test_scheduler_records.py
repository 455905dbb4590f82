"""Malformed records in Consul KV (issue 9, item 8): a key or value the scheduler cannot read is
skipped and reported (the snapshot's `unreadable`, the scheduler's log, `walle status`), never
deleted, and never stops scheduling of the other jobs. Runs against a fresh stand-in per test
with the recording executor of test_scheduler_service."""

from __future__ import annotations

import json
import logging

import pytest
import test_scheduler_service
from test_scheduler_service import (  # the recording executor and a fresh 3-node stand-in
    Clock,
    make_scheduler,
    records,
    web_spec,
)

from walle.adapters.consul import StateStore
from walle.cli.main import main
from walle.jobspec.encoding import spec_to_data
from walle.service.cluster import load_snapshot

pytestmark = pytest.mark.consul

cluster = test_scheduler_service.cluster  # the fixture: a fresh stand-in with 3 nodes

WEB_DATA = spec_to_data(web_spec())

MALFORMED = {
    "alloc key with a non-numeric slot": ("walle/allocs/x/abc",
                                          '{"node": "node1", "state": "running"}'),
    "alloc key with no slot": ("walle/allocs/x", '{"node": "node1", "state": "running"}'),
    "alloc value that is not JSON": ("walle/allocs/gone/0", "{not json"),
    "alloc value that is not an object": ("walle/allocs/gone/0", "[1, 2]"),
    "alloc with an unknown state": ("walle/allocs/gone/0", '{"node": "node1", "state": "zombie"}'),
    "alloc with a node that is not a string": ("walle/allocs/gone/0",
                                               '{"node": 5, "state": "running"}'),
    "alloc with a bad resource field": ("walle/allocs/gone/0", json.dumps(
        {"node": "node1", "state": "running", "reserved": {"bogus": 1}})),
    "job value that is not an object": ("walle/jobs/junk", "[1, 2]"),
    "job value that is not JSON": ("walle/jobs/junk", "{not json"),
    "job spec that is not an object": ("walle/jobs/junk", '{"version": "x", "spec": "web"}'),
    "job spec that no longer validates": ("walle/jobs/junk", json.dumps(
        {"version": "x", "spec": {**WEB_DATA, "name": "junk", "kind": "daemon"}})),
    "job stored under another name": ("walle/jobs/junk", json.dumps(
        {"version": "x", "spec": WEB_DATA})),
}


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_a_malformed_record_is_skipped_reported_and_kept(cluster, shape, caplog):
    key, value = MALFORMED[shape]
    cluster.client.kv.put(key, value)
    StateStore(cluster).put_job(web_spec(count=3), 0)

    snap = load_snapshot(cluster, StateStore(cluster))
    assert [k for k, _ in snap.unreadable] == [key]
    assert snap.unreadable[0][1]  # a reason is given
    assert "web" in snap.jobs

    s, ex = make_scheduler(cluster, Clock())
    with caplog.at_level(logging.WARNING, logger="walle"):
        s.step()
        s.step()
        s.step()
    assert {k: a.state for k, a in records(cluster).items() if k.startswith("web")} == {
        "web-0": "running", "web-1": "running", "web-2": "running"}
    assert sum(key in r.getMessage() for r in caplog.records) == 1  # said once, not per step
    _, entry = cluster.client.kv.get(key)
    assert entry is not None and entry["Value"].decode() == value  # never deleted or rewritten
    s.lock.step_down()


def test_an_unreadable_record_of_a_live_slot_blocks_only_that_slot(cluster):
    """The scheduler must not place a second instance over a slot whose record it cannot read
    (the instance may be running), nor fail every write trying to create that key."""
    StateStore(cluster).put_job(web_spec(count=3), 0)
    cluster.client.kv.put("walle/allocs/web/1", "{not json")
    s, ex = make_scheduler(cluster, Clock())
    s.step()
    s.step()
    assert sorted(k for k, _ in ex.placed) == ["web-0", "web-2"]
    assert {k: a.state for k, a in records(cluster).items()} == {
        "web-0": "running", "web-2": "running"}
    _, entry = cluster.client.kv.get("walle/allocs/web/1")
    assert entry["Value"] == b"{not json"
    s.lock.step_down()


def test_a_job_that_no_longer_validates_keeps_its_instances(cluster):
    """A stored spec a newer validator refuses is reported; its instances are left alone (not
    stopped as if the job were gone) and other jobs are still scheduled."""
    store = StateStore(cluster)
    store.put_job(web_spec(count=2), 0)
    s, ex = make_scheduler(cluster, Clock())
    s.step()
    s.step()
    cluster.client.kv.put("walle/jobs/web", json.dumps(
        {"version": "x", "spec": {**WEB_DATA, "kind": "daemon"}}))
    other = web_spec(count=1, service={"port": 9090}, name="api")
    store.put_job(other, 0)
    s.step()
    s.step()
    assert ex.stopped == []
    states = {k: a.state for k, a in records(cluster).items()}
    assert states == {"web-0": "running", "web-1": "running", "api-0": "running"}
    s.lock.step_down()


def test_walle_status_lists_unreadable_records(cluster, capsys):
    addr = cluster.address
    StateStore(cluster).put_job(web_spec(count=1), 0)
    cluster.client.kv.put("walle/allocs/x/abc", "{}")
    cluster.client.kv.put("walle/jobs/junk", "[1, 2]")

    assert main(["status", "--consul-addr", addr]) == 0
    out = capsys.readouterr().out
    assert "web" in out
    assert "unreadable records" in out
    assert "walle/allocs/x/abc" in out and "walle/jobs/junk" in out

    assert main(["status", "--consul-addr", addr, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["job"] for row in data["jobs"]] == ["web"]
    assert sorted(u["key"] for u in data["unreadable"]) == ["walle/allocs/x/abc",
                                                           "walle/jobs/junk"]
    assert all(u["reason"] for u in data["unreadable"])

    assert main(["status", "web", "--consul-addr", addr]) == 0  # one job's view too
