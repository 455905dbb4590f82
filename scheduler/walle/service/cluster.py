"""One consistent read of the cluster for the scheduler: desired jobs, slot records, nodes (as
the core sees them) and instance health. Reads only; the scheduler decides and writes.

A record that cannot be read (a stray key, a value that is not a record, a spec that no longer
validates) is skipped and listed in `Snapshot.unreadable`; the read never fails for it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from walle.adapters.consul import (
    BatchCommit,
    ConsulApi,
    NodeInfo,
    StateStore,
    StoredJob,
    Unreadable,
)
from walle.adapters.consul.health import ClusterHealth, fetch_cluster_health
from walle.core import Capacity, Node
from walle.jobspec import JobSpec, SpecError, parse_spec
from walle.naming import instance_id, job_key, parse_alloc_key, parse_job_key
from walle.service.records import SlotRecord, from_stored


@dataclass(frozen=True)
class Snapshot:
    jobs: dict[str, JobSpec]
    stored_jobs: dict[str, StoredJob]
    records: dict[str, SlotRecord]  # instance key (job-slot) -> record
    nodes: dict[str, Node]  # schedulable nodes, with state ready/draining/down
    addresses: dict[str, str]
    health: ClusterHealth
    # records that cannot be read (bad key, value, field, or a spec that no longer parses),
    # skipped so the others are scheduled; reported, never deleted
    unreadable: tuple[Unreadable, ...] = ()
    frozen_jobs: frozenset[str] = frozenset()  # jobs whose record is unreadable: hands off
    blocked_slots: frozenset[str] = frozenset()  # instance keys whose record is unreadable
    # nodes gone from the catalog (a graceful leave) within their grace: not in `nodes`, and
    # their instances are held as they are (service/presence.py; set by the scheduler)
    away: frozenset[str] = frozenset()
    # nodes' records of finished batch runs (walle/done/), by instance key (job-slot)
    commits: Mapping[str, BatchCommit] = field(default_factory=dict)

    def instance_status(self, node: str, key: str) -> str | None:
        """Worst check status of the instance registered as `key` on `node` (None: not
        registered there)."""
        return self.health.instances.get((node, key))


def node_state(info: NodeInfo, draining: bool) -> str:
    if info.health != "passing" and info.health != "maintenance":
        return "down"
    return "draining" if draining or info.health == "maintenance" else "ready"


def core_node(info: NodeInfo, draining: bool) -> Node:
    return Node(
        name=info.name,
        capacity=Capacity(cpu=info.cpu, memory=info.memory, disk=info.disk, gpus=info.gpus),
        zone=info.zone or "", rack=info.rack or "", labels=dict(info.labels),
        datasets=frozenset(info.datasets), state=node_state(info, draining),
        port_range=info.port_range,
    )


def load_snapshot(api: ConsulApi, store: StateStore) -> Snapshot:
    unreadable: list[Unreadable] = []
    _, stored_jobs = store.jobs(unreadable=unreadable)
    jobs = {}
    for name, stored in stored_jobs.items():
        try:
            jobs[name] = job_spec(name, stored)
        except Exception as err:  # noqa: BLE001 - any bad record is reported, never fatal
            unreadable.append(Unreadable(job_key(name), describe_error(err)))
    _, stored_allocs = store.allocs(unreadable=unreadable)
    records = {}
    for stored in stored_allocs.values():
        try:
            record = from_stored(stored)
        except Exception as err:  # noqa: BLE001 - as above
            unreadable.append(Unreadable(stored.key, describe_error(err)))
            continue
        records[record.key] = record
    commits = {instance_id(job, slot): c
               for (job, slot), c in store.batch_commits(unreadable=unreadable).items()}
    _, health = fetch_cluster_health(api)
    _, drains = store.drains()
    nodes = {n.name: core_node(n, n.name in drains) for n in health.nodes if n.schedulable}
    addresses = {n.name: n.address for n in health.nodes}
    return Snapshot(jobs, stored_jobs, records, nodes, addresses, health,
                    tuple(sorted(unreadable)), *hands_off(unreadable), commits=commits)


def job_spec(name: str, stored: StoredJob) -> JobSpec:
    spec = parse_spec(dict(stored.spec), source=job_key(name))
    if spec.name != name:
        raise SpecError(f"{job_key(name)}: holds the spec of job {spec.name!r}")
    return spec


def describe_error(err: Exception) -> str:
    """An error as an operator reads it: a spec error says field and fix already; anything
    else is named by its type too."""
    return str(err) if isinstance(err, SpecError) else f"{type(err).__name__}: {err}"


def hands_off(unreadable: list[Unreadable]) -> tuple[frozenset[str], frozenset[str]]:
    """Jobs and slots the scheduler must leave alone while their record is unreadable: it
    cannot know what they want (a job) or what runs there (a slot)."""
    jobs, slots = set(), set()
    for key, _ in unreadable:
        if (job := parse_job_key(key)) is not None:
            jobs.add(job)
        elif (parsed := parse_alloc_key(key)) is not None:
            slots.add(instance_id(*parsed))
    return frozenset(jobs), frozenset(slots)


def records_by_node(records: Mapping[str, SlotRecord]) -> dict[str, list[str]]:
    """Node -> instance keys that should run there (primary and previous instances)."""
    out: dict[str, list[str]] = {}
    for key, r in records.items():
        if r.alloc.state in ("pending", "running"):
            out.setdefault(r.alloc.node, []).append(key)
        if r.previous is not None:
            out.setdefault(r.previous.node, []).append(key)
    return out
