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
