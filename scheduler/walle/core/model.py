"""Cluster state seen by the placement core: nodes, allocations and resource grants.

Immutable values only. The fast mutable view used while planning lives in `walle.core.state`
(per-node free vectors and capacity indexes kept incrementally).
Units: cpu in cores (float), memory and disk in bytes, gpus as a count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from walle.jobspec.grammar import DEFAULT_PORT_RANGE
from walle.naming import instance_id

NodeState = Literal["ready", "draining", "down"]
AllocState = Literal["pending", "running", "failed", "stopped"]
NODE_STATES: tuple[str, ...] = ("ready", "draining", "down")
ALLOC_STATES: tuple[str, ...] = ("pending", "running", "failed", "stopped")


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a node offers. Also used for an instance's reservation (its minimums)."""

    cpu: float = 0.0
    memory: int = 0
    disk: int = 0
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    capacity: Capacity
    zone: str = ""
    rack: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # sorted pairs; a dict is accepted and sorted
    datasets: frozenset[str] = frozenset()
    state: NodeState = "ready"
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE  # dynamic ports, inclusive (core/ports.py)

    def __post_init__(self) -> None:
        if isinstance(self.labels, Mapping):
            object.__setattr__(self, "labels", tuple(sorted(self.labels.items())))
        if not isinstance(self.datasets, frozenset):
            object.__setattr__(self, "datasets", frozenset(self.datasets))
        if self.state not in NODE_STATES:
            raise ValueError(f"node {self.name!r}: state {self.state!r} is not one of "
                             f"{', '.join(NODE_STATES)}")
        if self.capacity.cpu < 0.001 or self.capacity.memory <= 0:
            raise ValueError(f"node {self.name!r}: capacity.cpu (at least 0.001 cores) and "
                             "capacity.memory must be positive (a node without resources is "
                             "not schedulable)")
        low, high = self.port_range
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"node {self.name!r}: port_range {low}-{high} must lie within "
                             "1-65535, low before high")

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None

    def attribute(self, attribute: str) -> str | None:
        """A constraint attribute: "name", "zone", "rack" or "label.<key>"."""
        if attribute == "name":
            return self.name
        if attribute == "zone":
            return self.zone or None
        if attribute == "rack":
            return self.rack or None
        if attribute.startswith("label."):
            return self.label(attribute[6:])
        raise ValueError(f"constraint attribute {attribute!r} is unknown: use name, zone, "
                         "rack or label.<key>")


@dataclass(frozen=True, slots=True)
class Grant:
    """The systemd resource properties of one instance on its node."""

    cpu_weight: int  # CPUWeight=, proportional to the guaranteed cores
    cpu_quota_percent: int  # CPUQuota=, percent of one core
    memory_min: int  # MemoryMin=
    memory_high: int  # MemoryHigh= (throttle before the hard limit)
    memory_max: int  # MemoryMax=


@dataclass(frozen=True, slots=True)
class Allocation:
    """One instance (job, slot) bound to a node. `reserved` holds the guaranteed minimums
    used for feasibility; `ceiling` the maximums it may burst to (cpu, memory)."""

    job: str
    slot: int
    node: str
    reserved: Capacity
    ceiling: Capacity
    spec_digest: str
    runtime_digest: str
    priority: int = 50
    state: AllocState = "pending"
    grant: Grant | None = None
    failed_nodes: tuple[str, ...] = ()  # nodes this slot failed on, oldest first
    since: float = 0.0  # when the core created it (the injected clock)
    ports: tuple[int, ...] = ()  # static ports it listens on: one holder per node and port
    # the node's GPUs it may open (/dev/nvidia<i>), one holder per index: core/gpus.py
    gpu_indices: tuple[int, ...] = ()
    # its dynamic ports, (label, port) by label, one holder per node and port: core/ports.py
    dynamic_ports: tuple[tuple[str, int], ...] = ()

    @property
    def key(self) -> str:
        return instance_id(self.job, self.slot)

    @property
    def live(self) -> bool:
        """Holds resources on its node."""
        return self.state in ("pending", "running")
