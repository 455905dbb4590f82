"""Builders for tests and benchmarks: small JobSpecs and Nodes without YAML.

Only tests and `bench/` use this; production specs come from `walle.jobspec.parse`.
"""

from __future__ import annotations

from walle.core.model import Capacity, Node
from walle.jobspec.grammar import DEFAULT_PORT_RANGE
from walle.jobspec.model import (
    Constraint,
    JobSpec,
    Port,
    Range,
    Resources,
    Runtime,
    UpdatePolicy,
)

GiB = 1 << 30


def make_job(name: str, count: int = 1, *, cpu: tuple[float, float] = (1, 1),
             memory_gib: tuple[float, float] = (1, 1), gpus: int = 0, disk_gib: float = 0,
             kind: str = "service", priority: int = 50, strategy: str | None = None,
             constraints: tuple[Constraint, ...] = (), data: tuple[str, ...] = (),
             command: str = "/usr/bin/true", max_parallel: int = 1,
             retries: int = 3, ports: tuple[Port, ...] = ()) -> JobSpec:
    return JobSpec(
        name=name, kind=kind, count=count, priority=priority, strategy=strategy,
        resources=Resources(cpu=Range(*cpu),
                            memory=Range(int(memory_gib[0] * GiB), int(memory_gib[1] * GiB)),
                            disk=int(disk_gib * GiB), gpus=gpus),
        runtime=Runtime(kind="exec", command=command), constraints=constraints, data=data,
        update=UpdatePolicy(max_parallel=max_parallel), retries=retries, ports=ports)


def make_node(name: str, *, cpu: float = 8, memory_gib: float = 32, gpus: int = 0,
              disk_gib: float = 100, zone: str = "z1", rack: str = "r1",
              labels: dict[str, str] | None = None, datasets: tuple[str, ...] = (),
              state: str = "ready",
              port_range: tuple[int, int] = DEFAULT_PORT_RANGE) -> Node:
    return Node(name, Capacity(cpu, int(memory_gib * GiB), int(disk_gib * GiB), gpus),
                zone=zone, rack=rack, labels=labels or {}, datasets=frozenset(datasets),
                state=state, port_range=port_range)
