"""One consistent read of the cluster for the scheduler: desired jobs, slot records, nodes (as
the core sees them) and instance health. Reads only; the scheduler decides and writes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from walle.adapters.consul import ConsulApi, NodeInfo, StateStore, StoredJob
from walle.adapters.consul.health import ClusterHealth, fetch_cluster_health
from walle.core import Capacity, Node
from walle.service.records import SlotRecord, from_stored
from walle.spec import JobSpec, SpecError, parse_spec

log = logging.getLogger("walle.cluster")


@dataclass(frozen=True)
class Snapshot:
    jobs: dict[str, JobSpec]
    stored_jobs: dict[str, StoredJob]
    records: dict[str, SlotRecord]  # instance key (job-slot) -> record
    nodes: dict[str, Node]  # schedulable nodes, with state ready/draining/down
    addresses: dict[str, str]
    health: ClusterHealth
    bad_jobs: dict[str, str]  # stored jobs that no longer parse: name -> why

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
    )


def load_snapshot(api: ConsulApi, store: StateStore) -> Snapshot:
    _, stored_jobs = store.jobs()
    jobs, bad = {}, {}
    for name, stored in stored_jobs.items():
        try:
            jobs[name] = parse_spec(dict(stored.spec), source=f"walle/jobs/{name}")
        except SpecError as err:  # written by an older Walle, or by hand: keep it visible
            bad[name] = str(err)
            log.error("job %s in Consul does not parse: %s", name, err)
    _, stored_allocs = store.allocs()
    records = {}
    for stored in stored_allocs.values():
        record = from_stored(stored)
        records[record.key] = record
    _, health = fetch_cluster_health(api)
    _, drains = store.drains()
    nodes = {n.name: core_node(n, n.name in drains) for n in health.nodes if n.schedulable}
    addresses = {n.name: n.address for n in health.nodes}
    return Snapshot(jobs, stored_jobs, records, nodes, addresses, health, bad)


def records_by_node(records: Mapping[str, SlotRecord]) -> dict[str, list[str]]:
    """Node -> instance keys that should run there (primary and previous instances)."""
    out: dict[str, list[str]] = {}
    for key, r in records.items():
        if r.alloc.state in ("pending", "running"):
            out.setdefault(r.alloc.node, []).append(key)
        if r.previous is not None:
            out.setdefault(r.previous.node, []).append(key)
    return out
