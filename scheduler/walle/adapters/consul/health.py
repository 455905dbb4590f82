"""One read of the whole cluster's health: node membership (serfHealth) and every instance's
checks, from a single blocking `/v1/health/state/any` plus the catalog's node list."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from walle.adapters.consul.api import ConsulApi
from walle.adapters.consul.nodes import SERF_HEALTH, NodeInfo, node_health, nodes_from

_RANK = {"passing": 0, "warning": 1, "maintenance": 2, "critical": 3}


@dataclass(frozen=True)
class ClusterHealth:
    index: int
    nodes: list[NodeInfo]
    # (node, service ID) -> the worst status of the instance's own checks
    instances: dict[tuple[str, str], str]


def instance_status(checks: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """Worst status per (node, service ID); a service in maintenance counts as critical for
    DNS (Consul hides it), so it ranks with critical here."""
    out: dict[tuple[str, str], str] = {}
    for check in checks:
        sid = check.get("ServiceID")
        if not sid:
            continue
        status = check.get("Status", "critical")
        if check.get("CheckID", "").startswith("_service_maintenance:"):
            status = "critical"
        key = (check["Node"], sid)
        if _RANK.get(status, 3) >= _RANK.get(out.get(key, "passing"), 3):
            out[key] = status
    return out


def fetch_cluster_health(api: ConsulApi, index: int = 0, wait: str | None = None
                         ) -> tuple[int, ClusterHealth]:
    idx, health, _ = fetch_health_base(api, index, wait)
    return idx, health


@dataclass(frozen=True)
class HealthBase:
    """What a full read knows that the non-passing checks alone do not: the catalog's nodes,
    the nodes that have a serfHealth check, and every instance that has a check. Between
    two full reads, a change of check statuses only (no node, service or check registered
    or removed) is `HealthBase.apply(critical + warning checks)`."""

    health: ClusterHealth
    serf_nodes: frozenset[str]

    def apply(self, index: int, nonpassing: Iterable[Mapping[str, Any]]) -> ClusterHealth:
        """The cluster's health when the checks not passing are `nonpassing` (the answers of
        /v1/health/state/critical and /warning, at `index`) and every other check known to
        the full read passes. Exact as long as no node, service or check was registered or
        removed since that read (the reader sees those moves in the nodes and services
        indexes and reads everything again)."""
        nonpassing = list(nonpassing)
        status: dict[str, str] = dict.fromkeys(self.serf_nodes, "passing")
        status.update(node_health(nonpassing))  # serfHealth not passing; maintenance wins
        nodes = [n if n.health == (h := status.get(n.name, "unknown")) else replace(n, health=h)
                 for n in self.health.nodes]
        instances = dict.fromkeys(self.health.instances, "passing")
        instances.update(instance_status(nonpassing))
        return ClusterHealth(index, nodes, instances)


def fetch_health_base(api: ConsulApi, index: int = 0, wait: str | None = None
                      ) -> tuple[int, ClusterHealth, HealthBase]:
    """Every check and node (the full read): (index, health, its base for later
    incremental reads)."""
    c = api.client
    idx, checks = api.call("health state", lambda: c.health.state(
        "any", index=index or None, wait=wait))
    _, catalog = api.call("catalog nodes", lambda: c.catalog.nodes())
    checks = checks or []
    health = ClusterHealth(int(idx), nodes_from(catalog or [], checks), instance_status(checks))
    serf = frozenset(c["Node"] for c in checks
                     if not c.get("ServiceID") and c.get("CheckID") == SERF_HEALTH)
    return int(idx), health, HealthBase(health, serf)


def watch_failed_nodes(api: ConsulApi, index: int = 0, wait: str | None = None
                       ) -> tuple[int, frozenset[str]]:
    """Block on the checks table (any check or node joining, failing or passing moves its
    index) and answer only the nodes whose serfHealth is critical (not in maintenance): what
    the leader's health watch needs to wake the loop and note failures, without reading
    every instance's check (the step reads those, once, when the index moved). The critical
    checks are few, whatever the cluster's size."""
    idx, checks = api.call("critical checks", lambda: api.client.health.state(
        "critical", index=index or None, wait=wait))
    health = node_health(checks or [])
    return int(idx), frozenset(node for node, status in health.items() if status == "critical")
