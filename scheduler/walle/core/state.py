"""The mutable view of the cluster used while one plan is being made.

Built from immutable `Node`s and `Allocation`s, then updated in place as instances are
reserved and released, so nothing is recomputed per placement:
- per-node free vectors (parallel lists; cpu in millicores, all integers),
- per-node held instances (for preemption and grants), per-job node and domain counts,
- for bin-packing, indexes of ready nodes by free capacity: `open_cpu` / `open_mem` (nodes
  holding something, sorted by free cpu / free memory: best fit is a bisect) and `empty`
  (unused nodes, largest first, GPU nodes kept apart so ordinary work leaves them free).
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


def held_from(alloc: Allocation, priority: int | None = None) -> Held:
    r, c = alloc.reserved, alloc.ceiling
    return Held(alloc.key, alloc.job, alloc.slot,
                alloc.priority if priority is None else priority,
                millicores(r.cpu), r.memory, r.disk, r.gpus,
                r.cpu, max(c.cpu, r.cpu), r.memory, max(c.memory, r.memory))


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
        self.zone = [n.zone for n in self.nodes]
        self.rack = [n.rack for n in self.nodes]
        self.on_node: list[dict[str, Held]] = [{} for _ in self.nodes]
        self.job_nodes: dict[str, dict[int, int]] = {}  # job -> node -> instances there
        self.job_domains: dict[str, dict[str, dict[str, int]]] = {}  # job -> attr -> value -> n
        self.total_cpu = sum(c for c, r in zip(self.cap_cpu, self.ready, strict=True) if r)
        self.total_mem = sum(m for m, r in zip(self.cap_mem, self.ready, strict=True) if r)
        self.indexed = False
        self._holders: dict[str, list[int]] | None = None
        self.open_cpu: list[tuple[int, int]] = []
        self.open_mem: list[tuple[int, int]] = []
        self.empty_plain: list[tuple[int, int, int]] = []
        self.empty_gpu: list[tuple[int, int, int]] = []

    # -- bulk load, then indexes ---------------------------------------------------------
    def build_indexes(self) -> None:
        """Sort once after the bulk load; from here on reserve/release keep them current."""
        self.open_cpu = sorted((self.free_cpu[i], i) for i in self._ready_with(True))
        self.open_mem = sorted((self.free_mem[i], i) for i in self._ready_with(True))
        empty = [i for i in self._ready_with(False)]
        self.empty_plain = sorted(self._empty_key(i) for i in empty if not self.cap_gpu[i])
        self.empty_gpu = sorted(self._empty_key(i) for i in empty if self.cap_gpu[i])
        self.indexed = True

    def _ready_with(self, holding: bool) -> list[int]:
        return [i for i in range(self.n) if self.ready[i] and bool(self.on_node[i]) == holding]

    def _empty_key(self, i: int) -> tuple[int, int, int]:
        return (-self.cap_cpu[i], -self.cap_mem[i], i)

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
        counts = self.job_nodes.setdefault(held.job, {})
        counts[i] = counts.get(i, 0) + 1
        self._count_domains(held.job, i, +1)
        if indexed:
            self._index(i)

    def release(self, i: int, key: str) -> Held:
        held = self.on_node[i][key]
        indexed = self.indexed and self.ready[i]
        if indexed:
            self._unindex(i)
        del self.on_node[i][key]
        self.free_cpu[i] += held.cpu
        self.free_mem[i] += held.memory
        self.free_disk[i] += held.disk
        self.free_gpu[i] += held.gpus
        counts = self.job_nodes[held.job]
        counts[i] -= 1
        if not counts[i]:
            del counts[i]
        self._count_domains(held.job, i, -1)
        if indexed:
            self._index(i)
        return held

    def _unindex(self, i: int) -> None:
        if self.on_node[i]:
            _remove(self.open_cpu, (self.free_cpu[i], i))
            _remove(self.open_mem, (self.free_mem[i], i))
        else:
            _remove(self.empty_gpu if self.cap_gpu[i] else self.empty_plain, self._empty_key(i))

    def _index(self, i: int) -> None:
        if self.on_node[i]:
            insort(self.open_cpu, (self.free_cpu[i], i))
            insort(self.open_mem, (self.free_mem[i], i))
        else:
            insort(self.empty_gpu if self.cap_gpu[i] else self.empty_plain, self._empty_key(i))

    # -- per-job placement facts ----------------------------------------------------------
    def count_on(self, job: str, i: int) -> int:
        counts = self.job_nodes.get(job)
        return counts.get(i, 0) if counts else 0

    def job_total(self, job: str) -> int:
        counts = self.job_nodes.get(job)
        return sum(counts.values()) if counts else 0

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
