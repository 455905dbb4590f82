"""Disaster recovery: slot records rebuilt from what runs on the nodes.

The units on a node are the ground truth of what runs there. When Walle's KV state is wiped,
or restored from an old backup, the slot records no longer say where instances run; this
module sorts out every instance registered on a live node where no record puts it:

- **adopt**: a passing instance of an existing job, in a slot below its count that has no
  record (or whose record points at a node where the slot is not registered), whose
  registration meta names the same job and slot. It gets a `running` record where it runs;
  nothing is restarted. Its version comes from the registration meta (`walle_digest`): an
  instance of an older version is then replaced by the normal rolling update, never killed
  all at once. Several passing instances of one slot: one is adopted (the current version
  first, then the node name), the others are stopped.
- **reap**: instances that no record can claim (a slot above the count, a slot whose record
  puts its instance elsewhere and finds it there, a failing instance, an instance of a
  stopped job). This is the orphan rule of before: it keeps "one instance per slot" true.
- **unclaimed**: instances of a job that is not in KV and has no tombstone
  (`walle/stopped/<job>`, written by `walle stop`): the state looks lost, so they keep
  running and are reported until the job is submitted again (then adopted) or an operator
  stops them (`walle stop <job>` writes the tombstone).
- **lost**: a running record of a service whose instance has not been registered on its
  (live) node for MISSING_GRACE seconds, and is not registered anywhere else: an agent
  restart forgot the registration (the unit still runs), or an old backup points at an
  instance that is gone. The leader places it again on the record's own node: idempotent, so
  a unit that still runs keeps its process and is registered again, and one that is gone
  starts again. (Failing the record instead would start a second copy elsewhere while the
  first may still run, unregistered.) If that placement fails, the record fails.

Only the registration meta and the health read already in the snapshot are used; the meta is
read (one health query per job) only when there is something to sort out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from walle.adapters.consul import ConsulApi, service_health
from walle.adapters.consul.tombstones import stopped_jobs
from walle.core import Allocation, Grant
from walle.core.feasibility import compile_job
from walle.core.reconcile import allocation_for
from walle.jobspec import JobSpec
from walle.naming import instance_id, parse_instance_id
from walle.service.cluster import Snapshot, records_by_node
from walle.service.params import ports_from_meta
from walle.service.records import SlotRecord

log = logging.getLogger("walle.adopt")

MISSING_GRACE = 30.0  # a running record's registration may vanish this long (agent restart)
MANIFEST_DIR = "/var/lib/walle/instances"

Meta = Mapping[tuple[str, str], Mapping[str, str]]  # (node, instance id) -> service meta


@dataclass(frozen=True)
class Found:
    """An instance registered on a live node where no record puts it."""

    job: str
    slot: int
    node: str
    status: str  # its worst check status

    @property
    def key(self) -> str:
        return instance_id(self.job, self.slot)

    def __str__(self) -> str:
        return f"{self.key}@{self.node}"


@dataclass
class Claims:
    records: dict[str, SlotRecord] = field(default_factory=dict)  # adopted: to write
    adopted: list[str] = field(default_factory=list)  # "key@node"
    lost: list[SlotRecord] = field(default_factory=list)  # to place again where they are
    reap: list[Found] = field(default_factory=list)
    unclaimed: list[Found] = field(default_factory=list)


def unrecorded(snap: Snapshot, records: Mapping[str, SlotRecord]) -> list[Found]:
    """Walle instances registered on live nodes where no record expects them."""
    expected = {(node, key) for node, keys in records_by_node(records).items()
                for key in keys}
    found = []
    instances = snap.health.instances
    for node, sid in sorted(instances.keys() - expected):  # the expected ones: not parsed
        status = instances[(node, sid)]
        parsed = parse_instance_id(sid)
        info = snap.nodes.get(node)
        if parsed is None or info is None or info.state == "down":
            continue
        if parsed[0] in snap.frozen_jobs or sid in snap.blocked_slots:
            continue  # its record is unreadable: hands off (docs/architecture.md)
        found.append(Found(parsed[0], parsed[1], node, status))
    return found


def sort_out(snap: Snapshot, records: Mapping[str, SlotRecord], found: list[Found],
             meta: Meta, stopped: frozenset[str], now: float) -> Claims:
    """Decide for every found instance: adopt, reap or leave unclaimed (pure)."""
    claims = Claims()
    candidates: dict[str, list[Found]] = {}
    for f in found:
        spec = snap.jobs.get(f.job)
        if spec is None:
            if f.key in records or f.job in stopped:
                claims.reap.append(f)
            else:
                claims.unclaimed.append(f)
            continue
        m = meta.get((f.node, f.key)) or {}
        if "walle_job" in m and (m["walle_job"], m.get("walle_slot")) != (f.job, str(f.slot)):
            continue  # a registration that only looks like ours: not ours to stop or adopt
        if f.slot < spec.count and f.status == "passing" and _claimable(snap, records.get(f.key)):
            candidates.setdefault(f.key, []).append(f)
        else:
            claims.reap.append(f)
    for key, group in sorted(candidates.items()):
        spec = snap.jobs[group[0].job]
        best = min(group, key=lambda f: (_digest(meta, f) != spec.digest(), f.node))
        claims.reap += [f for f in group if f is not best]
        claims.records[key] = _adopted(spec, best, meta, records.get(key), now)
        claims.adopted.append(str(best))
    return claims


def _claimable(snap: Snapshot, record: SlotRecord | None) -> bool:
    """The slot has no record, or its record's instance is not registered where the record
    says (an old backup): then an instance found running elsewhere can take the record."""
    if record is None:
        return True
    a = record.alloc
    if record.previous is not None or a.state == "pending":
        return False  # a move or a placement is under way: it owns the slot
    return a.state == "stopped" or snap.instance_status(a.node, a.key) is None


def _digest(meta: Meta, f: Found) -> str:
    return (meta.get((f.node, f.key)) or {}).get("walle_digest", "")


def _adopted(spec: JobSpec, f: Found, meta: Meta, current: SlotRecord | None,
             now: float) -> SlotRecord:
    digest = _digest(meta, f)
    if digest == spec.digest():
        digests = (digest, spec.runtime_digest())
    else:  # another version (or none known): the core's update path replaces it
        digests = (digest, (meta.get((f.node, f.key)) or {}).get("walle_runtime", ""))
    failed = current.alloc.failed_nodes if current else ()
    req = compile_job(spec, default_strategy="spread")  # the strategy plays no part here
    alloc = allocation_for(req, f.slot, f.node, digests, since=now,
                           state="running", failed_nodes=failed)
    # the ports it was started with (its registration says): the core keeps them
    alloc = replace(alloc, dynamic_ports=ports_from_meta(meta.get((f.node, f.key)) or {}))
    return SlotRecord(alloc=alloc, modify_index=current.modify_index if current else 0,
                      state_since=now)


def missing(snap: Snapshot, records: Mapping[str, SlotRecord]) -> list[SlotRecord]:
    """Running records of checked services whose instance is registered neither on their
    live node nor anywhere else."""
    registered = {sid for _, sid in snap.health.instances}
    out = []
    for key, r in records.items():
        spec = snap.jobs.get(r.alloc.job)
        node = snap.nodes.get(r.alloc.node)
        if (spec is None or spec.service is None or spec.health is None
                or r.alloc.state != "running" or r.previous is not None
                or node is None or node.state == "down" or key in registered):
            continue
        out.append(r)
    return out


class Adopter:
    """The leader's side: reads what `sort_out` needs only when there is something to sort,
    remembers how long records have been missing, and reports unclaimed instances once per
    change (not every step)."""

    def __init__(self, api: ConsulApi, clock: Callable[[], float]):
        self.api = api
        self.clock = clock
        self._missing_since: dict[str, float] = {}
        self._reported: frozenset[str] = frozenset()

    def claim(self, snap: Snapshot, records: Mapping[str, SlotRecord]) -> Claims:
        now = self.clock()
        found = unrecorded(snap, records)
        claims = Claims()
        if found:
            unknown = [f for f in found if f.job not in snap.jobs and f.key not in records]
            stopped = stopped_jobs(self.api) if unknown else frozenset()
            claims = sort_out(snap, records, found, self._meta(snap, found), stopped, now)
        self._report_unclaimed(claims.unclaimed)
        claims.lost = self._lost(snap, records, now)
        if claims.adopted:
            log.warning("adopted %d running instance(s) with no record: %s",
                        len(claims.adopted), ", ".join(claims.adopted))
        if claims.lost:
            log.warning("%d record(s) point at instances registered nowhere for %.0fs: %s; "
                        "placing them again where they are", len(claims.lost), MISSING_GRACE,
                        ", ".join(f"{r.key}@{r.alloc.node}" for r in claims.lost))
        return claims

    def replaced(self, keys: list[str]) -> None:
        """These lost instances were placed again: give their registration a new grace."""
        now = self.clock()
        for key in keys:
            self._missing_since[key] = now

    def _meta(self, snap: Snapshot, found: list[Found]) -> dict[tuple[str, str], dict]:
        services = {snap.jobs[f.job].service.name for f in found
                    if f.job in snap.jobs and snap.jobs[f.job].service is not None}
        meta: dict[tuple[str, str], dict] = {}
        for name in sorted(services):
            _, instances = service_health(self.api, name, passing=False)
            meta.update({(i.node, i.id): dict(i.meta) for i in instances})
        return meta

    def _lost(self, snap: Snapshot, records: Mapping[str, SlotRecord],
              now: float) -> list[SlotRecord]:
        gone = {r.key: r for r in missing(snap, records)}
        for key in list(self._missing_since):
            if key not in gone:
                del self._missing_since[key]
        for key in gone:
            self._missing_since.setdefault(key, now)
        return [r for key, r in gone.items() if now - self._missing_since[key] > MISSING_GRACE]

    def next_deadline(self) -> float | None:
        return (min(self._missing_since.values()) + MISSING_GRACE + 0.1
                if self._missing_since else None)

    def _report_unclaimed(self, unclaimed: list[Found]) -> None:
        names = frozenset(map(str, unclaimed))
        if names and names != self._reported:
            log.warning("%d instance(s) run with no job in Consul and no tombstone (state "
                        "lost?); keeping them: %s. Submit the job again to adopt them, or "
                        "`walle stop <job>` to stop them", len(names), ", ".join(sorted(names)))
        self._reported = names


def unclaimed_instances(snap: Snapshot) -> list[Found]:
    """What `walle status` reports: instances of jobs absent from KV, with no record. (Whether
    a tombstone will have them stopped is the leader's business.)"""
    return [f for f in unrecorded(snap, snap.records)
            if f.job not in snap.jobs and f.key not in snap.records]


def instance_manifest(alloc: Allocation, spec: JobSpec, grant: Grant) -> dict[str, Any]:
    """The small file placement leaves on the node (MANIFEST_DIR/<instance id>.json, 0600):
    what runs there and from which version, readable without Consul. Only values that do not
    change when the same allocation is placed again (`placed_at` is the core's creation time),
    so a re-run of place.yml leaves the file unchanged."""
    return {
        "job": spec.name, "slot": alloc.slot, "instance": alloc.key, "kind": spec.kind,
        "spec_digest": spec.digest(), "runtime_digest": spec.runtime_digest(),
        "reserved": {"cpu": alloc.reserved.cpu, "memory": alloc.reserved.memory},
        "grant": {"cpu_weight": grant.cpu_weight, "cpu_quota_percent": grant.cpu_quota_percent,
                  "memory_max": grant.memory_max},
        "placed_at": alloc.since,
    }
