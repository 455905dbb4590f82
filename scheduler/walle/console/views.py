"""The console's JSON views: plain dicts built from one cluster snapshot (service/cluster.py),
with the same rows `walle status`, `walle nodes` and `walle plan --explain` show.

Pure: no Consul, no clock. Every string in them may come from users (job names, reasons,
package values); the page renders them as text, never as markup.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any

from walle.adapters.consul import NodeInfo
from walle.catalog import Catalog, Installed
from walle.cli.events import event_rows
from walle.cli.jobs import instance_rows, job_rows, unreadable_rows
from walle.service.cluster import Snapshot
from walle.service.decide import Defaults
from walle.service.dryrun import dry_run
from walle.service.history import JobHistory

# worst first: the colour of a node box is the worst of its node health and its instances'
_RANK = {"down": 0, "critical": 1, "warning": 2, "passing": 3}
EVENTS_SHOWN = 50  # the newest events of all jobs (`walle events` has every job's last 100)


def node_health(info: NodeInfo, instance_statuses: Iterable[str]) -> str:
    """passing, warning, critical or down. A node whose serfHealth fails is down (its
    instances are lost); one in maintenance is a warning; otherwise the worst check of what
    is registered on it."""
    if info.health not in ("passing", "maintenance"):
        return "down"
    worst = "warning" if info.health == "maintenance" else "passing"
    for status in instance_statuses:
        status = status if status in _RANK else "critical"  # maintenance ranks as critical
        if _RANK[status] < _RANK[worst]:
            worst = status
    return worst


def node_view(snap: Snapshot, info: NodeInfo,
              usage: Mapping[tuple[str, str], Mapping[str, float]]) -> dict:
    node = snap.nodes.get(info.name)
    live = sorted((r.alloc for r in snap.records.values()
                   if r.alloc.node == info.name and r.alloc.live), key=lambda a: a.key)
    statuses = [s for (n, _), s in snap.health.instances.items() if n == info.name]
    used = [usage[(info.name, a.key)] for a in live if (info.name, a.key) in usage]
    used_memory = [u["memory_bytes"] for u in used
                   if isinstance(u.get("memory_bytes"), int | float)]
    return {
        "name": info.name, "address": info.address,
        "zone": info.zone or "", "rack": info.rack or "",
        "health": node_health(info, statuses), "serf_health": info.health,
        "state": node.state if node else "not schedulable",
        "problems": list(info.problems),
        "cpu": info.cpu, "memory": info.memory,
        "reserved_cpu": round(sum(a.reserved.cpu for a in live), 3),
        "reserved_memory": sum(a.reserved.memory for a in live),
        "used_memory": sum(used_memory) if used_memory else None,
        "instances": [{"instance": a.key, "job": a.job, "state": a.state,
                       "health": snap.instance_status(a.node, a.key) or "-",
                       "cpu": a.reserved.cpu, "memory": a.reserved.memory} for a in live],
    }


def pool_view(snap: Snapshot, usage: Mapping[tuple[str, str], Mapping[str, float]]
              ) -> list[dict]:
    """Zones, each with its racks, each with its node boxes (names sorted; "" when unset)."""
    zones: dict[str, dict[str, list[dict]]] = {}
    for info in snap.health.nodes:
        view = node_view(snap, info, usage)
        zones.setdefault(view["zone"], {}).setdefault(view["rack"], []).append(view)
    return [{"zone": zone, "racks": [{"rack": rack, "nodes": nodes}
                                     for rack, nodes in sorted(racks.items())]}
            for zone, racks in sorted(zones.items())]


def jobs_view(snap: Snapshot) -> list[dict]:
    """`walle status` rows, each with its instances (`walle status JOB` rows)."""
    return [{**row, "instances": instance_rows(snap, row["job"])} for row in job_rows(snap)]


def packages_view(installed: Mapping[str, Installed]) -> list[dict]:
    return [{"name": name, **record.to_json()} for name, record in sorted(installed.items())]


def catalog_view(catalog: Catalog | None) -> list[dict]:
    """What can be installed: each package's versions, newest first, and its description."""
    if catalog is None:
        return []
    out = []
    for name in sorted(catalog.packages):
        latest = catalog.latest(name)
        out.append({"name": name, "description": latest.description,
                    "versions": [str(v) for v in reversed(catalog.versions(name))]})
    return out


def events_view(histories: Mapping[str, JobHistory]) -> list[dict]:
    """The newest events of every job's history, newest first: `walle events` rows."""
    return list(reversed(event_rows(histories)[-EVENTS_SHOWN:]))


def state_view(snap: Snapshot, *, installed: Mapping[str, Installed],
               usage: Mapping[tuple[str, str], Mapping[str, float]],
               usage_note: str, histories: Mapping[str, JobHistory] | None = None) -> dict:
    """Everything the page polls for, in one document."""
    return {
        "pool": pool_view(snap, usage),
        "jobs": jobs_view(snap),
        "unreadable": unreadable_rows(snap),
        "packages": packages_view(installed),
        "usage_note": usage_note,
        "events": events_view(histories or {}),
    }


def explanation_view(snap: Snapshot, job: str, defaults: Defaults | None = None,
                     now: float | None = None,
                     presence: Mapping[str, Any] | None = None,
                     in_flight: Mapping[str, str] | None = None) -> dict | None:
    """`walle plan JOB --explain`'s node table as JSON: the leader's own decision as a dry run
    (service/dryrun.py), then every node's answer for one more instance (None: no such job)."""
    if job not in snap.jobs:
        return None
    run = dry_run(snap, defaults or Defaults(), time.time() if now is None else now,
                  jobs=[job], memory=presence, in_flight=in_flight)
    return dataclasses.asdict(run.jobs[0].nodes)
