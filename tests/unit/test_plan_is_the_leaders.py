"""`walle plan` and the leader give the same answer (issue 10, "One decision path").

On random clusters built with the core's builders (nodes ready, draining or down, some gone
from the catalog; jobs with constraints and strategies; slot records running, pending or
failed with a failure history and back-off, some unreadable), the CLI's dry run
(walle.service.dryrun, with the defaults as the leader publishes them) must report, slot by
slot, what the leader's own step decides (Scheduler._plan on the same snapshot), and its "one
more instance" must land where the leader puts the new slot when the job is scaled by one.
The old `walle plan` (explain() with the job's own instances dropped, the binpack default and
no failure history) failed the last property at once (first example: it named n0, the leader
placed on n2).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_core_properties import jobs, nodes

from walle.adapters.consul import ConsulApi, ConsulConfig, NodeInfo
from walle.adapters.consul.health import ClusterHealth
from walle.core import Plan, apply_plan, reconcile
from walle.naming import instance_id
from walle.service.cluster import Snapshot
from walle.service.decide import Defaults
from walle.service.dryrun import REFUSED, dry_run
from walle.service.records import SlotRecord
from walle.service.scheduler import Scheduler, SchedulerConfig

SETTINGS = settings(max_examples=int(os.environ.get("WALLE_PLAN_EXAMPLES", "60")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_000_000.0
GRACE = 15.0


@st.composite
def clusters(draw):
    """(snapshot, SchedulerConfig): records from a first round on all-ready nodes, then
    disturbed: node states drawn, a node maybe gone from the catalog, instances failed."""
    node_list, specs = draw(nodes()), draw(jobs())
    ready = [replace(n, state="ready") for n in node_list]
    first = reconcile(specs, [], ready, seed=draw(st.integers(0, 3)), now=NOW - 100)
    records = {}
    for a in apply_plan([], first):
        state = draw(st.sampled_from(["running", "running", "pending", "failed"]))
        failed_on = tuple(draw(st.lists(st.sampled_from([n.name for n in node_list]),
                                        max_size=3))) if state == "failed" else ()
        since = NOW - draw(st.sampled_from([0.0, 3.0, 30.0, 500.0]))
        alloc = replace(a, state=state, failed_nodes=failed_on or
                        ((a.node,) if state == "failed" else ()))
        records[a.key] = SlotRecord(alloc, state_since=since)
    gone = draw(st.sets(st.sampled_from([n.name for n in node_list]), max_size=1))
    in_catalog = [n for n in node_list if n.name not in gone]
    health = ClusterHealth(0, [NodeInfo(n.name, "", health="critical" if n.state == "down"
                                        else "passing", schedulable=True)
                               for n in in_catalog], {})
    # an unreadable slot record: listed as blocked, absent from the records (cluster.py)
    blocked = draw(st.sets(st.sampled_from(sorted(records)), max_size=1)) if records else set()
    records = {key: r for key, r in records.items() if key not in blocked}
    snap = Snapshot(specs, {}, records, {n.name: n for n in in_catalog}, {}, health,
                    blocked_slots=frozenset(blocked))
    config = SchedulerConfig(name="prop", inventory="unused", lock_delay=0,
                             seed=draw(st.integers(0, 5)),
                             strategy=draw(st.sampled_from(["spread", "binpack"])),
                             node_leave_grace=GRACE)
    return snap, config


def leader(config: SchedulerConfig) -> Scheduler:
    """A scheduler at its first step of a term; nothing here talks to Consul."""
    api = ConsulApi(ConsulConfig.from_env(addr="http://127.0.0.1:9"))
    return Scheduler(api, config, executor=object(), clock=lambda: NOW)


def leader_plan(config: SchedulerConfig, snap: Snapshot) -> Plan:
    s = leader(config)
    seen = s.presence.observe(snap, NOW)
    return s._plan(seen, dict(seen.records), NOW)


def published(config: SchedulerConfig) -> Defaults:
    """The defaults as `walle plan` reads them: what the leader wrote to Consul KV."""
    return Defaults.from_json(json.loads(json.dumps(leader(config).defaults.to_json())))


def fate(plan: Plan, snap: Snapshot, key: str) -> tuple[bool, str | None]:
    """(refused, node the slot's instance ends on), read off the leader's plan directly."""
    if any(instance_id(f.job, s) == key for f in plan.failures for s in f.slots):
        return True, None
    for new in [p.alloc for p in plan.places] + [x.new for x in (
            *plan.migrates, *plan.replaces, *plan.updates, *plan.regrants)]:
        if new.key == key:
            return False, new.node
    gone = {s.alloc.key for s in plan.stops} | {e.alloc.key for e in plan.evictions}
    record = snap.records.get(key)
    if record is None or key in gone or not record.alloc.live:
        return False, None
    return False, record.alloc.node


def acts_on(plan: Plan, key: str) -> bool:
    return any(x.key == key for x in [p.alloc for p in plan.places] + [
        y.new for y in (*plan.migrates, *plan.replaces, *plan.updates, *plan.regrants)] + [
        s.alloc for s in plan.stops] + [e.alloc for e in plan.evictions])


@SETTINGS
@given(clusters())
def test_the_plan_reports_the_leaders_decision_for_every_slot(cluster):
    snap, config = cluster
    plan = leader_plan(config, snap)
    run = dry_run(snap, published(config), NOW)
    assert run.plan == plan
    for job in run.jobs:
        for d in job.slots:
            refused, node = fate(plan, snap, d.instance)
            if d.action == "waiting":  # backing off: no instance now, whatever the core said
                assert d.node is None and node is None, d
                continue
            if d.action in ("held", "hands-off"):  # node away, record unreadable: left as is
                record = snap.records.get(d.instance)
                assert d.node == (record.alloc.node if record and record.alloc.live
                                  else None), d
                assert node in (None, d.node) and not acts_on(plan, d.instance), d
                continue
            assert (REFUSED in d.action.split("+"), d.node) == (refused, node), d


@SETTINGS
@given(clusters())
def test_one_more_instance_goes_where_the_leader_puts_it(cluster):
    snap, config = cluster
    run = dry_run(snap, published(config), NOW)
    for job in run.jobs:
        spec = snap.jobs[job.job]
        scaled = replace(snap, jobs={**snap.jobs, job.job: replace(spec, count=spec.count + 1)})
        plan = leader_plan(config, scaled)
        assert job.new_instance.node == fate(plan, scaled, instance_id(job.job, spec.count))[1]
