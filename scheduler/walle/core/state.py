"""The mutable view of the cluster used while one plan is being made.

Built from immutable `Node`s and `Allocation`s, then updated in place as instances are
reserved and released, so nothing is recomputed per placement:
- per-node free vectors (parallel lists; cpu in millicores, all integers),
- per-node held instances (for preemption and grants), per-job node and domain counts,
- for bin-packing, indexes of ready nodes by free capacity: `open` (nodes holding something,
  sorted by their scarcer free resource, memory converted to cpu-equivalents at the pool's
  memory/cpu ratio: a bisect finds the tightest nodes with room, and nodes exhausted in one
  resource sink to the bottom instead of clogging the search) and `empty_*` (unused nodes,
  largest first, GPU nodes kept apart so ordinary work leaves them free).
Nodes are ordered by name; index positions are what the planner passes around.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass

from walle.core.feasibility import MILLI, millicores
from walle.core.model import Allocation, Node

TRACKED_DOMAINS = ("zone", "rack")


@dataclass(slots=True)
class Held:
    """An instance holding resources on a node (what preemption and grants look at)."""

    key: str
    job: str
    slot: int
    priority: int
    cpu: int  # millicores reserved
    memory: int
    disk: int
    gpus: int
    cpu_min: float
    cpu_max: float
    mem_min: int
    mem_max: int
    ports: tuple[int, ...] = ()  # static ports
    dynamic: tuple[str, ...] = ()  # labels it needs a port of the node's range for
    assigned: tuple[int, ...] = ()  # the ports it holds for them already (or none yet)


def held_from(alloc: Allocation, priority: int | None = None) -> Held:
    r, c = alloc.reserved, alloc.ceiling
    return Held(alloc.key, alloc.job, alloc.slot,
                alloc.priority if priority is None else priority,
                millicores(r.cpu), r.memory, r.disk, r.gpus,
                r.cpu, max(c.cpu, r.cpu), r.memory, max(c.memory, r.memory), alloc.ports,
                tuple(label for label, _ in alloc.dynamic_ports),
                tuple(port for _, port in alloc.dynamic_ports))


class ClusterIndex:
    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes: list[Node] = sorted(nodes, key=lambda n: n.name)
        self.pos = {node.name: i for i, node in enumerate(self.nodes)}
        if len(self.pos) != len(self.nodes):
            raise ValueError("nodes: two nodes share a name; node names must be unique")
        caps = [n.capacity for n in self.nodes]
        self.n = len(self.nodes)
        self.cap_cpu = [math.floor(round(c.cpu * MILLI, 6)) for c in caps]
        self.cap_mem = [int(c.memory) for c in caps]
        self.cap_disk = [int(c.disk) for c in caps]
        self.cap_gpu = [int(c.gpus) for c in caps]
        self.free_cpu, self.free_mem = list(self.cap_cpu), list(self.cap_mem)
        self.free_disk, self.free_gpu = list(self.cap_disk), list(self.cap_gpu)
        self.ready = [n.state == "ready" for n in self.nodes]
        self.gpu_nodes = [i for i, c in enumerate(self.cap_gpu) if c > 0]
        self.zone = [n.zone for n in self.nodes]
        self.rack = [n.rack for n in self.nodes]
        self.on_node: list[dict[str, Held]] = [{} for _ in self.nodes]
        self.ports_on: list[dict[int, int]] = [{} for _ in self.nodes]  # port -> holders
        self.port_range = [n.port_range for n in self.nodes]
        # ports of each node's range held (distinct) or promised to holders without one yet
        self.range_used = [0] * self.n
        self.job_nodes: dict[str, dict[int, int]] = {}  # job -> node -> instances there
        self.job_count: dict[str, int] = {}  # job -> instances held anywhere
        self.job_domains: dict[str, dict[str, dict[str, int]]] = {}  # job -> attr -> value -> n
        self.total_cpu = sum(c for c, r in zip(self.cap_cpu, self.ready, strict=True) if r)
        self.total_mem = sum(m for m, r in zip(self.cap_mem, self.ready, strict=True) if r)
        self.indexed = False
        self._holders: dict[str, list[int]] | None = None
        self.mem_to_cpu = self.total_cpu / max(self.total_mem, 1)
        self.open: list[tuple[float, int]] = []
        self.open_cpu: list[tuple[int, int]] = []  # by free cpu: fits for cpu-led jobs
        self.open_mem: list[tuple[int, int]] = []  # by free memory: for memory-led jobs
        # unused ready nodes, largest first: (gpu node?, ordered by memory?) -> sorted keys
        self.empty: dict[tuple[bool, bool], list[tuple[int, int, int]]] = {}

    # -- bulk load, then indexes ---------------------------------------------------------
    def build_indexes(self) -> None:
        """Sort once after the bulk load; from here on reserve/release keep them current."""
        busy = self._ready_with(True)
        self.open = sorted((self.open_key(i), i) for i in busy)
        self.open_cpu = sorted((self.free_cpu[i], i) for i in busy)
        self.open_mem = sorted((self.free_mem[i], i) for i in busy)
        unused = self._ready_with(False)
        self.empty = {(gpu, by_mem): sorted(self._empty_key(i, by_mem) for i in unused
                                            if bool(self.cap_gpu[i]) == gpu)
                      for gpu in (False, True) for by_mem in (False, True)}
        self.indexed = True

    def _ready_with(self, holding: bool) -> list[int]:
        return [i for i in range(self.n) if self.ready[i] and bool(self.on_node[i]) == holding]

    def open_key(self, i: int) -> float:
        """The scarcer free resource of node i, in millicore-equivalents."""
        return min(self.free_cpu[i], self.free_mem[i] * self.mem_to_cpu)

    def need_key(self, cpu: int, memory: int) -> float:
        """The open_key a node needs to surely have room for (cpu, memory)."""
        return max(cpu, memory * self.mem_to_cpu)

    def _empty_key(self, i: int, by_mem: bool) -> tuple[int, int, int]:
        if by_mem:
            return (-self.cap_mem[i], -self.cap_cpu[i], i)
        return (-self.cap_cpu[i], -self.cap_mem[i], i)

    def memory_heavy(self, cpu: int, memory: int) -> bool:
        """Asks for more memory per core than the pool has: prefers memory-rich nodes."""
        return memory * self.mem_to_cpu > cpu

    # -- reserve / release (mirror images) ------------------------------------------------
    def reserve(self, i: int, held: Held) -> None:
        indexed = self.indexed and self.ready[i]
        if indexed:
            self._unindex(i)
        self.free_cpu[i] -= held.cpu
        self.free_mem[i] -= held.memory
        self.free_disk[i] -= held.disk
        self.free_gpu[i] -= held.gpus
        self.on_node[i][held.key] = held
        self._count_ports(i, held, +1)
        counts = self.job_nodes.setdefault(held.job, {})
        counts[i] = counts.get(i, 0) + 1
        self.job_count[held.job] = self.job_count.get(held.job, 0) + 1
        self._count_domains(held.job, i, +1)
        if indexed:
            self._index(i)

    def release(self, i: int, key: str) -> Held:
        held = self.on_node[i][key]
        indexed = self.indexed and self.ready[i]
        if indexed:
            self._unindex(i)
        del self.on_node[i][key]
        self._count_ports(i, held, -1)
        self.free_cpu[i] += held.cpu
        self.free_mem[i] += held.memory
        self.free_disk[i] += held.disk
        self.free_gpu[i] += held.gpus
        counts = self.job_nodes[held.job]
        counts[i] -= 1
        if not counts[i]:
            del counts[i]
        self.job_count[held.job] -= 1
        self._count_domains(held.job, i, -1)
        if indexed:
            self._index(i)
        return held

    def _count_ports(self, i: int, held: Held, delta: int) -> None:
        low, high = self.port_range[i]
        on = self.ports_on[i]
        for port in held.ports + held.assigned:
            before = on.get(port, 0)
            on[port] = before + delta
            if low <= port <= high and (before == 0 or on[port] == 0):
                self.range_used[i] += delta  # the first holder takes it, the last frees it
        self.range_used[i] += delta * max(0, len(held.dynamic) - len(held.assigned))

    def free_ports(self, i: int) -> int:
        """Ports of node i's range nobody holds or was promised this round."""
        low, high = self.port_range[i]
        return high - low + 1 - self.range_used[i]

    def _unindex(self, i: int) -> None:
        if self.on_node[i]:
            _remove(self.open, (self.open_key(i), i))
            _remove(self.open_cpu, (self.free_cpu[i], i))
            _remove(self.open_mem, (self.free_mem[i], i))
        else:
            gpu = bool(self.cap_gpu[i])
            for by_mem in (False, True):
                _remove(self.empty[gpu, by_mem], self._empty_key(i, by_mem))

    def _index(self, i: int) -> None:
        if self.on_node[i]:
            insort(self.open, (self.open_key(i), i))
            insort(self.open_cpu, (self.free_cpu[i], i))
            insort(self.open_mem, (self.free_mem[i], i))
        else:
            gpu = bool(self.cap_gpu[i])
            for by_mem in (False, True):
                insort(self.empty[gpu, by_mem], self._empty_key(i, by_mem))

    # -- per-job placement facts ----------------------------------------------------------
    def count_on(self, job: str, i: int) -> int:
        counts = self.job_nodes.get(job)
        return counts.get(i, 0) if counts else 0

    def job_total(self, job: str) -> int:
        return self.job_count.get(job, 0)

    def domain_counts(self, job: str, attribute: str) -> dict[str, int]:
        """Instances of `job` per value of a node attribute (zone, rack, label.x, name)."""
        per_attr = self.job_domains.setdefault(job, {})
        counts = per_attr.get(attribute)
        if counts is None:  # first use of this attribute for this job: count once, then track
            counts = {}
            for i, n in self.job_nodes.get(job, {}).items():
                value = self.nodes[i].attribute(attribute) or ""
                counts[value] = counts.get(value, 0) + n
            per_attr[attribute] = counts
        return counts

    def _count_domains(self, job: str, i: int, delta: int) -> None:
        per_attr = self.job_domains.get(job)
        if not per_attr:
            return
        for attribute, counts in per_attr.items():
            value = self.nodes[i].attribute(attribute) or ""
            counts[value] = counts.get(value, 0) + delta

    def holders(self, dataset: str) -> list[int]:
        """Nodes holding `dataset` (built once per plan, on first use)."""
        if self._holders is None:
            self._holders = {}
            for i, node in enumerate(self.nodes):
                for name in node.datasets:
                    self._holders.setdefault(name, []).append(i)
        return self._holders.get(dataset, [])

    def used_nodes(self) -> int:
        return sum(1 for held in self.on_node if held)


def _remove(index: list, entry: tuple) -> None:
    k = bisect_left(index, entry)
    if k < len(index) and index[k] == entry:
        del index[k]
