"""The leader's snapshot, kept between steps: what did not change is not read or decoded again.

`load_snapshot` (service/cluster.py) reads and decodes everything: every job (each spec parsed
again), every slot record, every check and node. At 100,000 instances that is tens of MB and
seconds per step, whatever changed. `SnapshotReader.load()` returns the same Snapshot, but:

- slot records: the leader is the only writer of walle/allocs/ (docs/architecture.md), and
  Consul answers the largest ModifyIndex under a prefix for a `?keys&separator=/` listing
  (one short key per job). When that index is the one the leader last read or wrote itself,
  the records it keeps are what Consul holds: nothing is read. Otherwise the prefix is read
  and only the entries whose ModifyIndex changed are decoded. A write of the leader moves the
  kept index only when all of it applied (a conflict, an error, a delete: read again);
  `resync` seconds after the last full read everything is read again anyway (a hand edit, a
  restore: the loop's resync bound, as before);
- jobs: read each step (one small value per job) but a spec is parsed again only when its
  ModifyIndex moved;
- health and nodes, incrementally: two index probes (the catalog's nodes and services
  tables: an empty node-meta match of `/v1/catalog/nodes` and `/v1/catalog/service/` of a
  name no Walle service can have, both answered with their table's index and no body) and
  the checks that do not pass (`/v1/health/state/critical` and `/warning`: few, whatever the
  cluster's size). When no node, service or check was registered or removed since the last
  full read (both probes unmoved), the health is that read's with the statuses of the
  non-passing checks (`HealthBase.apply`): a node that failed, a check that turned critical
  or passes again are seen at once without reading 100,000 checks. When a probe moved (an
  instance registered or deregistered, a node joined or left) the checks and catalog are
  read in full, as when the two non-passing answers disagree on the checks' index (a write
  between them);
- the resync: due every `resync` seconds, it yields to a step whose read shows a node newly
  failed (the failover is not held up by a full read of every record and check: the
  issue's 38 s); the leader then steps again at once (`resync_deferred`).

A new leader starts a new reader (`Scheduler._new_term`): nothing is kept across terms.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from walle.adapters.consul import ConsulApi, StateStore, StoredJob, Unreadable
from walle.adapters.consul.health import ClusterHealth, HealthBase, fetch_health_base
from walle.adapters.consul.state import BadRecord, decode_alloc
from walle.jobspec import JobSpec
from walle.naming import ALLOCS_PREFIX, instance_id, job_key, parse_alloc_key
from walle.service.cluster import Snapshot, core_node, describe_error, hands_off, job_spec
from walle.service.records import SlotRecord, from_stored

RESYNC = 30.0  # seconds: everything is read again at least this often
# no node carries this meta: the answer is empty and its index is the nodes table's
_PROBE_META = {"walle_index_probe": "none"}
# no Walle service has this name (a service name is a DNS label: no "_"), and Consul answers
# the services table's index for a service that does not exist
_PROBE_SERVICE = "walle_index_probe"


class SnapshotReader:
    def __init__(self, api: ConsulApi, store: StateStore, *, resync: float = RESYNC,
                 clock: Callable[[], float] = time.monotonic):
        self.api, self.store, self.resync, self.clock = api, store, resync, clock
        self.full_reads = 0  # how often the slot records were read in full (the bench)
        self.health_full_reads = 0  # ...and every check (tests, the bench)
        self.resync_deferred = False  # a due resync yielded to a node's failure
        self._jobs: dict[str, tuple[int, JobSpec | Exception]] = {}
        self._read_at = float("-inf")  # the last full read (resync)
        self._records: dict[str, SlotRecord] = {}  # instance key -> record
        self.forget()

    def forget(self, health: bool = True) -> None:
        """Read everything again at the next load (a write failed or conflicted). The kept
        records stay for comparison: one whose ModifyIndex is the stored entry's is what
        Consul holds (the leader kept it from Consul's own answer), so it is not decoded."""
        self._allocs_index: int | None = None
        self._alloc_problems: list[Unreadable] = []
        if not health:
            return
        self._health: ClusterHealth | None = None
        self._health_base: HealthBase | None = None
        self._health_indexes: tuple[int, int, int] | None = None  # nodes, services, checks

    # ----- the step's read ------------------------------------------------------------------
    def load(self) -> Snapshot:
        if self.clock() - self._read_at >= self.resync:
            before, full = self._health, self.health_full_reads
            if before is not None and not self.resync_deferred \
                    and _down(self._read_health()) - _down(before):
                self.resync_deferred = True  # a node failed: act on it first, resync after
            else:
                self.resync_deferred = False
                self.forget(health=self.health_full_reads == full)  # not twice in one load
                self._read_at = self.clock()
        unreadable: list[Unreadable] = []
        _, stored_jobs = self.store.jobs(unreadable=unreadable)
        jobs = self._parse_jobs(stored_jobs, unreadable)
        self._read_records()
        unreadable += self._alloc_problems
        commits = {instance_id(job, slot): c
                   for (job, slot), c in self.store.batch_commits(unreadable=unreadable).items()}
        health = self._read_health()
        _, drains = self.store.drains()
        nodes = {n.name: core_node(n, n.name in drains) for n in health.nodes if n.schedulable}
        addresses = {n.name: n.address for n in health.nodes}
        return Snapshot(jobs, stored_jobs, dict(self._records), nodes, addresses, health,
                        tuple(sorted(unreadable)), *hands_off(unreadable), commits=commits)

    def _parse_jobs(self, stored_jobs: Mapping[str, StoredJob],
                    unreadable: list[Unreadable]) -> dict[str, JobSpec]:
        """Each spec parsed once per ModifyIndex (a parse validates the whole spec again)."""
        jobs = {}
        for name, stored in stored_jobs.items():
            kept = self._jobs.get(name)
            if kept is None or kept[0] != stored.modify_index:
                try:
                    parsed: JobSpec | Exception = job_spec(name, stored)
                except Exception as err:  # noqa: BLE001 - any bad record is reported
                    parsed = err
                kept = self._jobs[name] = (stored.modify_index, parsed)
            if isinstance(kept[1], Exception):
                unreadable.append(Unreadable(job_key(name), describe_error(kept[1])))
            else:
                jobs[name] = kept[1]
        for name in set(self._jobs) - set(stored_jobs):
            del self._jobs[name]
        return jobs

    def _read_records(self) -> None:
        index = self._prefix_index()
        if index == self._allocs_index:
            return  # what Consul holds is what we keep
        self.full_reads += 1
        idx, entries = self.api.call("read slot records", lambda: self.api.client.kv.get(
            ALLOCS_PREFIX, recurse=True))
        kept, records, problems = self._records, {}, []
        for entry in entries or []:
            key = entry["Key"]
            record = kept.get(_instance_of(key))
            if record is not None and record.modify_index == int(entry["ModifyIndex"]):
                records[record.key] = record  # unchanged: not decoded again
                continue
            try:
                record = from_stored(decode_alloc(entry))
            except BadRecord as bad:
                problems.append(Unreadable(bad.key, bad.reason))
                continue
            except Exception as err:  # noqa: BLE001 - as load_snapshot: reported, skipped
                problems.append(Unreadable(key, describe_error(err)))
                continue
            records[record.key] = record
        self._records, self._alloc_problems = records, problems
        self._allocs_index = int(idx)

    def _prefix_index(self) -> int:
        """The largest ModifyIndex under walle/allocs/ (or the KV index when it is empty),
        from a listing of one key per job."""
        idx, _ = self.api.call("slot records index", lambda: self.api.client.kv.get(
            ALLOCS_PREFIX, keys=True, separator="/"))
        return int(idx)

    def _read_health(self) -> ClusterHealth:
        """The health as of now: from the kept full read and the non-passing checks when
        only statuses changed, else read in full (see the module's docstring). The probes
        come after the non-passing checks: unmoved, they prove that no node, service or
        check was registered or removed up to the moment those were read."""
        c = self.api.client
        kept = self._health_indexes
        if self._health_base is not None and kept is not None:
            checks, critical = self.api.call("critical checks",
                                             lambda: c.health.state("critical"))
            warning_idx, warning = int(checks), None
            if int(checks) != kept[2]:
                warning_idx, warning = self.api.call("warning checks",
                                                      lambda: c.health.state("warning"))
            tables = self._table_indexes()
            if tables == kept[:2] and int(warning_idx) == int(checks):
                if warning is not None:  # statuses moved
                    self._health = self._health_base.apply(
                        int(checks), [*(critical or []), *(warning or [])])
                    self._health_indexes = (*tables, int(checks))
                return self._health  # type: ignore[return-value]
        else:
            tables = self._table_indexes()
        self.health_full_reads += 1
        checks_idx, self._health, self._health_base = fetch_health_base(self.api)
        self._health_indexes = (*tables, checks_idx)
        return self._health

    def _table_indexes(self) -> tuple[int, int]:
        """The catalog's nodes and services tables' indexes (two answers without a body)."""
        c = self.api.client
        nodes, _ = self.api.call("nodes index", lambda: c.catalog.nodes(node_meta=_PROBE_META))
        services, _ = self.api.call("services index",
                                    lambda: c.catalog.service(_PROBE_SERVICE))
        return int(nodes), int(services)

    # ----- what the leader wrote --------------------------------------------------------------
    def wrote(self, put: Iterable[SlotRecord], indexes: Mapping[str, int],
              deleted: bool) -> None:
        """A leader write applied in full: keep the records as written. `indexes` are
        Consul's new ModifyIndex per key (the txn results); a delete answers none, so after
        one the records are read again."""
        if deleted or self._allocs_index is None:
            self._allocs_index = None
            return
        for record in put:
            self._records[record.key] = record
        self._allocs_index = max([self._allocs_index, *indexes.values()])


def _down(health: ClusterHealth | None) -> set[str]:
    """Nodes that read as failed (serfHealth not passing, not in maintenance)."""
    if health is None:
        return set()
    return {n.name for n in health.nodes if n.health not in ("passing", "maintenance")}


def _instance_of(key: str) -> str:
    """walle/allocs/<job>/<slot> -> the instance key <job>-<slot> (records are kept by it)."""
    parsed = parse_alloc_key(key)
    return instance_id(*parsed) if parsed else ""


