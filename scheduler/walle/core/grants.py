"""Elastic grants: turn each instance's min/max range into systemd properties on its node.

The minimum is guaranteed (feasibility reserved it); the room above it is shared. CPU:
CPUWeight proportional to the guaranteed cores, CPUQuota at the maximum, lowered when the
maximums on a node add up to more than it has: the elastic parts (max - min) shrink by the
same factor, so no quota falls below its minimum. Memory: MemoryMin = min, MemoryMax = max,
MemoryHigh = 90% of max, lowered the same way when the node's memory is overcommitted, so the
kernel throttles and reclaims before anyone hits the hard limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from walle.core.model import Allocation, Grant, Node
from walle.jobspec.model import Resources

WEIGHT_PER_CORE = 100  # systemd's default CPUWeight is 100: one guaranteed core = default
MEMORY_HIGH_FRACTION = 0.9

# (key, cpu_min, cpu_max, mem_min, mem_max): the numbers the grant computation needs
Demand = tuple[str, float, float, int, int]


def compute_grants(node: Node, allocations_on_node: Iterable[Allocation]) -> dict[str, Grant]:
    """Grant of every live allocation on `node`, keyed by `Allocation.key`."""
    demands = [(a.key, a.reserved.cpu, a.ceiling.cpu, a.reserved.memory, a.ceiling.memory)
               for a in allocations_on_node if a.live]
    return grants_for(node.capacity.cpu, node.capacity.memory, demands)


def grant_alone(resources: Resources) -> Grant:
    """The grant of an instance with nothing to share its node with: the same policy with no
    overcommit. The executor uses it for an instance the core gave no grant (a placement
    repeated from its record); the core's next regrant replaces it."""
    cpu, memory = resources.cpu, resources.memory
    demand = ("", cpu.min, cpu.max, int(memory.min), int(memory.max))
    return grants_for(math.inf, math.inf, [demand])[""]


def grants_for(cpu_capacity: float, memory_capacity: float,
               demands: Sequence[Demand]) -> dict[str, Grant]:
    cpu_scale = _elastic_scale(cpu_capacity, [(d[1], d[2]) for d in demands])
    mem_scale = _elastic_scale(memory_capacity, [(d[3], d[4]) for d in demands])
    grants = {}
    for key, cpu_min, cpu_max, mem_min, mem_max in demands:
        cpu_quota = cpu_min + (max(cpu_max, cpu_min) - cpu_min) * cpu_scale
        mem_max = max(mem_max, mem_min)
        mem_share = mem_min + (mem_max - mem_min) * mem_scale
        high = max(mem_min, min(int(mem_max * MEMORY_HIGH_FRACTION), int(mem_share)))
        grants[key] = Grant(
            cpu_weight=max(1, min(10000, round(cpu_min * WEIGHT_PER_CORE))),
            cpu_quota_percent=max(1, math.ceil(round(cpu_quota * 100, 6))),
            memory_min=int(mem_min),
            memory_high=high,
            memory_max=int(mem_max),
        )
    return grants


def _elastic_scale(capacity: float, ranges: Sequence[tuple[float, float]]) -> float:
    """Fraction of each elastic part (max - min) the node can honour: 1 when the maximums fit,
    otherwise the leftover above all minimums shared in proportion to the elastic parts."""
    total_min = sum(lo for lo, _ in ranges)
    elastic = sum(max(hi, lo) - lo for lo, hi in ranges)
    if elastic <= 0 or total_min + elastic <= capacity:
        return 1.0
    return max(0.0, (capacity - total_min) / elastic)
