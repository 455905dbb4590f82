"""Catalog nodes as Walle sees them: resources from node meta, health from serfHealth."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from walle.adapters.consul.api import ConsulApi
from walle.jobspec.grammar import DEFAULT_PORT_RANGE

Health = Literal["passing", "warning", "critical", "maintenance", "unknown"]

META_PREFIX = "walle_"
LABEL_PREFIX = "walle_label_"
SERF_HEALTH = "serfHealth"
NODE_MAINTENANCE = "_node_maintenance"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    address: str
    cpu: float = 0.0  # cores
    memory: int = 0  # bytes
    disk: int = 0  # bytes
    gpus: int = 0
    zone: str | None = None
    rack: str | None = None
    datasets: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    health: Health = "unknown"  # serfHealth status (maintenance wins over it)
    schedulable: bool = False  # False when walle_cpu is missing or any walle_ meta is bad
    problems: tuple[str, ...] = ()  # why it is not schedulable, one line per cause
    meta: Mapping[str, str] = field(default_factory=dict)  # raw node meta
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE  # walle_port_range: dynamic ports

    @property
    def healthy(self) -> bool:
        return self.health == "passing"


def node_from_catalog(entry: Mapping[str, Any], health: Health = "unknown") -> NodeInfo:
    """One `/v1/catalog/nodes` entry (+ its serfHealth status) -> NodeInfo."""
    meta = dict(entry.get("Meta") or {})
    problems: list[str] = []
    if "walle_cpu" not in meta:
        problems.append("node meta has no walle_cpu (run the consul role with walle facts)")
    cpu = _number(meta, "walle_cpu", float, problems)
    memory = _number(meta, "walle_memory", int, problems)
    disk = _number(meta, "walle_disk", int, problems)
    gpus = _gpus(meta, problems)
    port_range = _port_range(meta, problems)
    return NodeInfo(
        name=entry["Node"],
        address=entry.get("Address", ""),
        cpu=cpu,
        memory=memory,
        disk=disk,
        gpus=gpus,
        zone=meta.get("walle_zone") or None,
        rack=meta.get("walle_rack") or None,
        datasets=_csv(meta.get("walle_datasets", "")),
        labels={k[len(LABEL_PREFIX):]: v for k, v in meta.items() if k.startswith(LABEL_PREFIX)},
        health=health,
        schedulable=not problems,
        problems=tuple(problems),
        meta=meta,
        port_range=port_range,
    )


def node_health(checks: Iterable[Mapping[str, Any]]) -> dict[str, Health]:
    """Node name -> serfHealth status, from `/v1/health/state/any` (node maintenance wins)."""
    out: dict[str, Health] = {}
    for check in checks:
        if check.get("ServiceID"):
            continue
        cid = check.get("CheckID")
        if cid == NODE_MAINTENANCE:
            out[check["Node"]] = "maintenance"
        elif cid == SERF_HEALTH and out.get(check["Node"]) != "maintenance":
            out[check["Node"]] = check.get("Status", "unknown")
    return out


def nodes_from(catalog: Iterable[Mapping[str, Any]],
               checks: Iterable[Mapping[str, Any]]) -> list[NodeInfo]:
    health = node_health(checks)
    nodes = [node_from_catalog(e, health.get(e["Node"], "unknown")) for e in catalog]
    return sorted(nodes, key=lambda n: n.name)


def fetch_nodes(api: ConsulApi, index: int = 0, wait: str | None = None
                ) -> tuple[int, list[NodeInfo]]:
    """Block (when index > 0) on health changes, then read the catalog: (index, nodes).
    The index is the health index: serfHealth flips and node joins both move it."""
    c = api.client
    idx, checks = api.call("health state", lambda: c.health.state("any", index=index or None,
                                                                   wait=wait))
    _, catalog = api.call("catalog nodes", lambda: c.catalog.nodes())
    return int(idx), nodes_from(catalog or [], checks or [])


def nodes(api: ConsulApi) -> list[NodeInfo]:
    return fetch_nodes(api)[1]


def _number(meta: Mapping[str, str], key: str, kind: type, problems: list[str]):
    raw = meta.get(key)
    if raw is None or raw == "":
        return kind(0)
    try:
        value = kind(float(raw)) if kind is int else kind(raw)
    except ValueError:
        problems.append(f"node meta {key}={raw!r} is not a number")
        return kind(0)
    if value < 0:
        problems.append(f"node meta {key}={raw!r} is negative")
        return kind(0)
    return value


def _gpus(meta: Mapping[str, str], problems: list[str]) -> int:
    """walle_gpus is a count ("2"); a comma-separated list of models counts its items."""
    raw = (meta.get("walle_gpus") or "").strip()
    if not raw:
        return 0
    if raw.isdigit():
        return int(raw)
    items = _csv(raw)
    if not items:
        problems.append(f"node meta walle_gpus={raw!r} is neither a count nor a list")
    return len(items)


def _port_range(meta: Mapping[str, str], problems: list[str]) -> tuple[int, int]:
    raw = meta.get("walle_port_range")
    if not raw:
        return DEFAULT_PORT_RANGE
    try:
        return parse_range(raw)
    except ValueError as err:
        problems.append(f"node meta walle_port_range: {err}")
        return DEFAULT_PORT_RANGE


def parse_range(raw: str) -> tuple[int, int]:
    """A node's walle_port_range meta, "LOW-HIGH" (inclusive), as (low, high)."""
    low, sep, high = raw.strip().partition("-")
    if not (sep and low.strip().isdigit() and high.strip().isdigit()):
        raise ValueError(f"{raw!r} is not a port range LOW-HIGH such as 20000-32000")
    lo, hi = int(low), int(high)
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError(f"{raw!r}: the range must lie within 1024-65535, low before high")
    return lo, hi


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in raw.split(",") if x.strip())
