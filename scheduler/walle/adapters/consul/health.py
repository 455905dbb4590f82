"""One read of the whole cluster's health: node membership (serfHealth) and every instance's
checks, from a single blocking `/v1/health/state/any` plus the catalog's node list."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from walle.adapters.consul.api import ConsulApi
from walle.adapters.consul.nodes import NodeInfo, node_health, nodes_from

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
    c = api.client
    idx, checks = api.call("health state", lambda: c.health.state(
        "any", index=index or None, wait=wait))
    _, catalog = api.call("catalog nodes", lambda: c.catalog.nodes())
    checks = checks or []
    health = ClusterHealth(int(idx), nodes_from(catalog or [], checks), instance_status(checks))
    return int(idx), health


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
