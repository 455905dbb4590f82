"""Measured usage: each node's `walle-exporter` /summary (roles/exporter), found through the
Consul catalog, one HTTP request per node, in parallel, each bounded by a timeout.

The one reader of usage: `walle metrics --usage`, the console, the leader's usage-driven grants
(service/elastic.py) and the autoscaler import it from here. A node whose exporter is missing,
slow or broken adds nothing (and is logged); it never raises for one node.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor

from walle.adapters.consul.services import ServiceInstance, service_health

EXPORTER_SERVICE = "walle-exporter"
SUMMARY_TIMEOUT_S = 5.0
MAX_PARALLEL = 16

# (node, instance id) -> the exporter's measures of it (cpu_seconds, cpu_percent,
# cpu_throttled_share, memory_bytes, memory_max_bytes, restarts, ...; see
# walle_exporter.summary)
Usage = dict[tuple[str, str], dict[str, float]]

log = logging.getLogger("walle.usage")


def read_node_usage(api, nodes: Collection[str], timeout: float = SUMMARY_TIMEOUT_S) -> Usage:
    """The measures of every instance on `nodes`, from the /summary of each node's exporter.
    Raises ConsulError only when the catalog itself cannot be read."""
    if not nodes:
        return {}
    _, exporters = service_health(api, EXPORTER_SERVICE, passing=False)
    wanted = [e for e in exporters if e.node in nodes and e.port]
    usage: Usage = {}
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, len(wanted)))) as pool:
        docs = pool.map(lambda e: fetch_summary(e, timeout), wanted)
        for exporter, doc in zip(wanted, docs, strict=True):
            usage.update(summary_usage(exporter.node, doc))
    return usage


def summary_usage(node: str, doc: object) -> Usage:
    """(node, instance id) -> measures from one /summary document; anything malformed is
    left out (the document comes from a node: untrusted)."""
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, dict):
        return {}
    return {(node, key): measures for key, measures in instances.items()
            if isinstance(key, str) and isinstance(measures, dict)}


def fetch_summary(exporter: ServiceInstance, timeout: float = SUMMARY_TIMEOUT_S) -> dict | None:
    host = f"[{exporter.address}]" if ":" in exporter.address else exporter.address
    url = f"http://{host}:{exporter.port}/summary"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310
            doc = json.load(reply)
    except (OSError, ValueError) as exc:
        log.warning("usage of %s not read: %s: %s", exporter.node, url, exc)
        return None
    return doc if isinstance(doc, dict) else None


def measure(measures: dict, field: str) -> float | None:
    """One numeric measure, or None when absent or not a number (bool is not one)."""
    value = measures.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def cpu_throttled_share(measures: dict) -> float | None:
    """The share (0..1) of CPU periods in which the kernel throttled the instance since the
    exporter's previous sample (cpu.stat nr_throttled / nr_periods); None where the cgroup
    keeps no bandwidth statistics (no CPU quota, or cgroup accounting off) or the value is
    not a share."""
    value = measure(measures, "cpu_throttled_share")
    return value if value is not None and 0 <= value <= 1 else None
