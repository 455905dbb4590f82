"""`walle plan`: the leader's decision on the live snapshot, as a dry run, slot by slot.

`dry_run` sees what a new leader's first decision sees: the stored slot records (every
instance, failure history included), the nodes with their drains, nodes that left the catalog
or failed (held as away for their grace, counted from now: service/presence.py), unreadable
records (hands off), and the cluster's defaults the leader published (`published_defaults`). It
calls the leader's own `decide` and reads every slot's fate off the plan: kept, placed, moved,
replaced, stopped, evicted, refused (with the core's per-node reasons), waiting out a back-off,
or held, or in flight (a playbook of the leader acts on it now: walle/config/in-flight, which
the leader publishes; the leader decides on that slot again once its outcome is in). "A new
instance" is what `walle scale JOB count+1` would get: the same decision with
one more slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from walle.adapters.consul import StateStore
from walle.adapters.consul.state import PLACEMENT_CONFIG, BadRecord
from walle.core import Explanation, Plan, apply_plan, explain
from walle.core.shed import Pressure, pressure_from_json
from walle.jobspec import JobSpec
from walle.naming import IN_FLIGHT_KEY, PRESENCE_KEY, PRESSURE_KEY, instance_id
from walle.service.cluster import Snapshot
from walle.service.decide import Defaults, decide, retry_at, take_commits
from walle.service.presence import NodePresence
from walle.service.records import SlotRecord

# a slot's decisions, as `walle plan` names them (DECISION column, "action" in --json)
KEEP, PLACE, MOVE, REPLACE, UPDATE, REGRANT = "keep", "place", "move", "replace", "update", \
    "regrant"
STOP, EVICT, REFUSED, WAITING, HELD, HANDS_OFF, DONE = "stop", "evict", "refused", "waiting", \
    "held", "hands-off", "done"
IN_FLIGHT = "in-flight"


@dataclass(frozen=True)
class SlotDecision:
    instance: str
    slot: int
    now: str  # what the records say: "running on node2 (node down)", "no instance"
    action: str  # one of the names above; several joined with "+" (e.g. "evict+place")
    node: str | None  # where the slot's instance will be (None: nowhere)
    reason: str


@dataclass(frozen=True)
class JobPlan:
    job: str
    count: int
    slots: tuple[SlotDecision, ...]
    new_instance: SlotDecision  # what one more instance would get
    nodes: Explanation  # node by node, for one more instance after this plan (full scan)

    @property
    def unplaced(self) -> tuple[str, ...]:
        """Instances the job asks for that will have no place: refused, backing off, or
        hands off without an instance."""
        return tuple(d.instance for d in self.slots
                     if d.slot < self.count and d.node is None and d.action != DONE)


@dataclass(frozen=True)
class DryRun:
    plan: Plan
    jobs: tuple[JobPlan, ...]
    away: frozenset[str]
    pressure: Pressure | None = None  # what it shed with (the leader's published samples)


def published_defaults(store: StateStore) -> tuple[Defaults, str]:
    """The defaults the leader published, or the built-in ones; and where they came from, in
    words (the CLI prints it)."""
    try:
        body = store.placement_config()
        if body is not None:
            return Defaults.from_json(body), "published by the leader"
        why = f"no leader has published {PLACEMENT_CONFIG} yet"
    except BadRecord as err:
        why = str(err)
    except ValueError as err:
        why = f"{PLACEMENT_CONFIG}: {err}"
    return Defaults(), f"built-in defaults ({why})"


def published_presence(store: StateStore) -> dict[str, Any]:
    """Since when the leader sees nodes failed or missing (empty when it published nothing
    or the value cannot be read: the graces then count from now, as for a new leader)."""
    try:
        return store.leader_note(PRESENCE_KEY) or {}
    except BadRecord:
        return {}


def published_pressure(store: StateStore) -> Pressure | None:
    """The nodes' usage samples and shed moves the leader published (None when it published
    none or the value cannot be read: the dry run then sheds nothing)."""
    try:
        body = store.leader_note(PRESSURE_KEY)
        return None if body is None else pressure_from_json(body)
    except (BadRecord, ValueError):
        return None


def published_in_flight(store: StateStore) -> dict[str, str]:
    """The slots the leader's batches act on now, slot -> what the batch does ("place",
    "stop", ...), as the leader last published them (walle/config/in-flight); empty when it
    published nothing (it waits for each batch, or runs none) or the value cannot be read."""
    try:
        body = store.leader_note(IN_FLIGHT_KEY) or {}
    except BadRecord:
        return {}
    slots = body.get("slots") if isinstance(body, dict) else None
    return {str(k): str(v) for k, v in slots.items()} if isinstance(slots, dict) else {}


def dry_run(snap: Snapshot, defaults: Defaults, now: float, *,
            jobs: Iterable[str] | None = None, what_if: JobSpec | None = None,
            memory: Mapping[str, Any] | None = None,
            pressure: Pressure | None = None,
            in_flight: Mapping[str, str] | None = None) -> DryRun:
    """The leader's decision on `snap` (stored records, as a new leader finds them), slot by
    slot for `jobs` (default: all). `what_if`: a spec decided as if it had been submitted.
    `pressure`: the leader's usage samples (`published_pressure`), so that the dry run sheds
    what the leader would. `in_flight` (published_in_flight): slots a batch of the leader acts
    on now; the leader holds them back until its outcome is in, and so does this."""
    if what_if is not None:
        snap = replace(snap, jobs={**snap.jobs, what_if.name: what_if})
    presence = NodePresence(defaults.node_leave_grace, defaults.node_down_grace)
    presence.remember(memory or {})  # the leader's graces, counted from when it saw them
    snap = presence.observe(snap, now)
    done, _ = take_commits(snap, snap.records, now)  # as the leader does first
    snap = replace(snap, records={**snap.records, **done})
    in_flight = dict(in_flight or {})
    plan = _decide(snap, snap.jobs, now, defaults, pressure, in_flight)
    names = sorted(snap.jobs) if jobs is None else list(jobs)
    return DryRun(plan, tuple(_job_plan(snap, plan, name, now, defaults, pressure, in_flight)
                              for name in names), snap.away, pressure)


def _decide(snap: Snapshot, jobs: dict[str, JobSpec], now: float, defaults: Defaults,
            pressure: Pressure | None, in_flight: Mapping[str, str]) -> Plan:
    return decide(replace(snap, jobs=jobs), snap.records, now, seed=defaults.seed,
                  placement=defaults.placement(), pressure=pressure, in_flight=set(in_flight))


def _job_plan(snap: Snapshot, plan: Plan, name: str, now: float, defaults: Defaults,
              pressure: Pressure | None, in_flight: Mapping[str, str]) -> JobPlan:
    spec = snap.jobs[name]
    records = {r.alloc.slot: r for r in snap.records.values() if r.alloc.job == name}
    actions = _actions(plan)
    slots = tuple(_slot(snap, name, slot, records.get(slot), actions, now, defaults,
                        in_flight) for slot in sorted(set(range(spec.count)) | set(records)))
    # one more instance: the decision for `walle scale JOB count+1`
    more = _decide(snap, {**snap.jobs, name: replace(spec, count=spec.count + 1)}, now,
                   defaults, pressure, in_flight)
    new = _slot(snap, name, spec.count, None, _actions(more), now, defaults, in_flight)
    after = apply_plan([r.alloc for r in snap.records.values()], plan)
    nodes = explain(spec, snap.nodes, after, config=defaults.placement())
    return JobPlan(name, spec.count, slots, new, nodes)


def _actions(plan: Plan) -> dict[str, list[tuple[str, str | None, str]]]:
    """Instance key -> (action, node it ends on, why) for every action and refusal."""
    out: dict[str, list[tuple[str, str | None, str]]] = {}

    def add(key: str, action: str, node: str | None, why: str) -> None:
        out.setdefault(key, []).append((action, node, why))

    for e in plan.evictions:
        add(e.alloc.key, EVICT, None, f"evicted by {e.by} (higher priority)")
    for s in plan.stops:
        add(s.alloc.key, STOP, None, s.reason)
    for p in plan.places:
        add(p.alloc.key, PLACE, p.alloc.node, p.reason)
    for m in plan.migrates:
        add(m.new.key, MOVE, m.new.node, f"from {m.old.node}: {m.reason}")
    for r in plan.replaces:
        where = f" (from {r.old.node})" if r.old.node != r.new.node else ""
        add(r.new.key, REPLACE, r.new.node, f"new version{where}")
    for u in plan.updates:
        add(u.new.key, UPDATE, u.new.node, "new version, applied in place")
    for g in plan.regrants:
        add(g.new.key, REGRANT, g.new.node, "elastic grant follows the node's load")
    for f in plan.failures:
        for slot in f.slots:
            add(instance_id(f.job, slot), REFUSED, None, f"no feasible node: {f.message}")
    return out


def _slot(snap: Snapshot, job: str, slot: int, record: SlotRecord | None,
          actions: dict[str, list[tuple[str, str | None, str]]], now: float,
          defaults: Defaults, in_flight: Mapping[str, str]) -> SlotDecision:
    key = instance_id(job, slot)
    a = record.alloc if record else None
    node = a.node if a and a.live else None

    def decision(action: str, where: str | None, reason: str) -> SlotDecision:
        return SlotDecision(key, slot, _now(snap, record), action, where, reason)

    if key in snap.blocked_slots:
        return decision(HANDS_OFF, node, "its record cannot be read: fix or delete it")
    if a and a.live and a.node in snap.away:
        return decision(HELD, node, f"node {a.node} left the catalog: its instances are held "
                                    f"up to {defaults.node_leave_grace:g}s (node_leave_grace)")
    if key in in_flight:
        return decision(IN_FLIGHT, node, f"a {in_flight[key]} playbook of the leader acts on "
                                          "it now (or waits for its node): the leader decides "
                                          "on it again once its outcome is in")
    found = actions.get(key, [])
    if record and retry_at(record) > now:
        tried = ", ".join(a.failed_nodes) or a.node
        why = f"failed on {tried}; next try in {retry_at(record) - now:.0f}s (back-off)"
        return decision(WAITING, None, "; ".join([why] + [w for act, _, w in found
                                                         if act == REFUSED]))
    if found:
        ends = [n for _, n, _ in found if n is not None]
        return decision("+".join(act for act, _, _ in found), ends[-1] if ends else None,
                        "; ".join(w for _, _, w in found))
    if a and a.state == "stopped":
        return decision(DONE, None, "ran to completion")
    if a and a.state == "pending":
        return decision(KEEP, node, "placed; the leader waits for its checks to pass")
    return decision(KEEP, node, "")


def _now(snap: Snapshot, record: SlotRecord | None) -> str:
    if record is None:
        return "no instance"
    a = record.alloc
    info = snap.nodes.get(a.node)
    if a.node in snap.away:
        trouble = "node left the catalog"
    elif info is None:
        trouble = "node gone"
    else:
        trouble = "" if info.state == "ready" else f"node {info.state}"
    return f"{a.state} on {a.node}" + (f" ({trouble})" if trouble else "")
