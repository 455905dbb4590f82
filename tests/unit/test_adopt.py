"""walle.service.adopt's pure rules: which unrecorded instances are adopted, stopped or kept."""

from __future__ import annotations

from walle.adapters.consul.health import ClusterHealth
from walle.core import Capacity, Grant, Node
from walle.core.feasibility import compile_job
from walle.core.reconcile import allocation_for
from walle.jobspec import parse_spec
from walle.service.adopt import instance_manifest, sort_out, unclaimed_instances, unrecorded
from walle.service.cluster import Snapshot
from walle.service.records import SlotRecord

GIB = 1024 ** 3


def web(count: int = 2):
    return parse_spec({"name": "web", "kind": "service", "count": count,
                       "resources": {"cpu": "0.5", "memory": "128M"},
                       "runtime": {"command": "/usr/bin/python3"},
                       "service": {"port": 8080}, "health": {"type": "tcp"}})


def snapshot(jobs, instances, records=None, down=()):
    nodes = {n: Node(n, Capacity(4, 8 * GIB), state="down" if n in down else "ready")
             for n in ("n1", "n2", "n3")}
    return Snapshot(jobs=jobs, stored_jobs={}, records=records or {}, nodes=nodes,
                    addresses={}, health=ClusterHealth(1, [], instances))


def meta(job="web", slot=0, digest=""):
    return {"walle_job": job, "walle_slot": str(slot), "walle_digest": digest}


def test_a_passing_instance_of_a_slot_without_record_is_adopted_where_it_runs():
    spec = web()
    snap = snapshot({"web": spec}, {("n2", "web-0"): "passing", ("n3", "web-1"): "critical"})
    found = unrecorded(snap, {})
    claims = sort_out(snap, {}, found, {("n2", "web-0"): meta(digest=spec.digest())},
                      frozenset(), now=5.0)
    record = claims.records["web-0"]
    assert (record.alloc.node, record.alloc.state) == ("n2", "running")
    assert (record.alloc.spec_digest, record.alloc.runtime_digest) == (
        spec.digest(), spec.runtime_digest())
    assert [str(f) for f in claims.reap] == ["web-1@n3"]  # failing: not adopted


def test_a_registration_that_only_looks_like_ours_is_left_alone():
    snap = snapshot({"web": web()}, {("n1", "web-0"): "passing"})
    claims = sort_out(snap, {}, unrecorded(snap, {}), {("n1", "web-0"): meta(job="other")},
                      frozenset(), now=0.0)
    assert not claims.records and not claims.reap and not claims.unclaimed


def test_unknown_jobs_are_kept_unless_tombstoned_and_dead_nodes_are_ignored():
    snap = snapshot({}, {("n1", "api-0"): "passing", ("n2", "old-1"): "passing",
                         ("n3", "api-1"): "passing"}, down={"n3"})
    found = unrecorded(snap, {})
    claims = sort_out(snap, {}, found, {}, frozenset({"old"}), now=0.0)
    assert [str(f) for f in claims.unclaimed] == ["api-0@n1"]
    assert [str(f) for f in claims.reap] == ["old-1@n2"]
    assert [str(f) for f in unclaimed_instances(snap)] == ["api-0@n1", "old-1@n2"]


def test_a_slot_whose_record_finds_its_instance_keeps_it_and_the_stray_is_stopped():
    spec = web()
    req = compile_job(spec, default_strategy="spread")
    alloc = allocation_for(req, 0, "n1", (spec.digest(), spec.runtime_digest()), since=0.0,
                           state="running")
    records = {"web-0": SlotRecord(alloc, modify_index=3)}
    snap = snapshot({"web": spec}, {("n1", "web-0"): "passing", ("n2", "web-0"): "passing"},
                    records)
    claims = sort_out(snap, records, unrecorded(snap, records), {}, frozenset(), now=0.0)
    assert not claims.records and [str(f) for f in claims.reap] == ["web-0@n2"]


def test_the_manifest_is_the_same_when_the_same_allocation_is_placed_again():
    spec = web()
    alloc = allocation_for(compile_job(spec, default_strategy="spread"), 1, "n1",
                           (spec.digest(), spec.runtime_digest()), since=42.0)
    grant = Grant(cpu_weight=50, cpu_quota_percent=50, memory_min=1, memory_high=None,
                  memory_max=2)
    first = instance_manifest(alloc, spec, grant)
    assert first == instance_manifest(alloc, spec, grant)
    assert first["instance"] == "web-1" and first["placed_at"] == 42.0
    assert first["spec_digest"] == spec.digest()
