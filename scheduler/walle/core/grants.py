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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

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


# ----- usage-driven grants ----------------------------------------------------------------------
# The grants above follow declared ranges only. The leader then moves each instance's CPUQuota
# and MemoryHigh inside [min, max] from measured usage, one sample at a time: an instance using
# almost all of its grant ("pressing") for `samples` samples in a row asks for more, one idle
# for as long asks for less; the node's room above all minimums is shared among the asks
# (weighted water-filling: the same proportions as the declared policy when everyone asks for
# the maximum). Hysteresis: a streak of samples before any change, a dead band between the
# idle and pressing thresholds that a change aims into (`target`), no change smaller than
# `min_change`, falls slower than rises (more samples), and the streak restarts after each
# change. The policy works in the units a grant is written in (whole percents of a core,
# bytes): asks are rounded so that a change always lands in the dead band, and the shares of
# the room are whole units that add up to the room, so rounding neither wastes room nor moves
# a grant the water-filling did not move (at a few percent, flooring each share on its own
# lost a unit that went round the neighbours from sample to sample: grants flapped).
#
# CPU has a second pressure signal: throttling. The kernel stops a cgroup that has used its
# quota for the rest of each period (cpu.stat nr_throttled of nr_periods); an instance
# throttled in at least `throttled` of the periods of a sample is pressing on its quota
# whatever its usage reads. Usage alone misses it when the CPUs themselves are slower than
# the quota (a starved vCPU: a busy instance under a 100 % quota was measured at 84 % of it,
# never reaching `press`), and throttling alone misses a single-threaded instance whose quota
# is a whole core (it can never use more, so it is never throttled): either one presses.


@dataclass(frozen=True)
class ElasticPolicy:
    press: float = 0.9  # usage >= press x grant: pressing on it
    idle: float = 0.5  # usage <= idle x grant: idle
    target: float = 0.7  # a change puts usage at about target x the new grant (dead band)
    samples: int = 2  # consecutive pressing samples before a rise...
    idle_samples: int = 4  # ...and idle ones before a fall: slow down, quick up
    step: float = 0.5  # a rise multiplies the grant by at least 1 + step, a fall divides it
    min_change: float = 0.1  # relative changes smaller than this are not made
    # CPU throttled in >= this share of the sample's periods (cpu.stat nr_throttled /
    # nr_periods): pressing on the quota, whatever the usage. A half: sustained, not the odd
    # burst (an instance that only bursts past its quota now and then is not asking for more).
    # Limit: where the CPUs deliver less than idle x (1 + step) = 75 % of a quota, a throttled
    # instance reads as idle once raised and its grant goes up and down (slowly: a streak each
    # way); the same for an instance throttled in its bursts whose mean use is under 75 %.
    throttled: float = 0.5

    def presses(self, used: float, granted: float) -> bool:
        """Usage pressing on its grant (the usage half of pressing; throttling is the other,
        for CPU)."""
        return used >= self.press * granted

    def rise(self, granted: float, used: float | None) -> float:
        """What a pressing instance asks for, before rounding to units and its ceiling: its
        grant raised by `step`, at least its use / `target` (the dead band)."""
        return max(granted * (1 + self.step), 0.0 if used is None else used / self.target)

    def __post_init__(self) -> None:
        if not 0 < self.idle < self.target < self.press <= 1:
            raise ValueError("elastic policy: 0 < idle < target < press <= 1")
        if not 0 < self.throttled <= 1:
            raise ValueError("elastic policy: 0 < throttled <= 1")
        if self.samples < 1 or self.idle_samples < 1 or self.step <= 0 or self.min_change < 0:
            raise ValueError("elastic policy: samples >= 1, step > 0, min_change >= 0")


@dataclass(frozen=True)
class Streak:
    """Consecutive samples pressing (> 0) or idle (< 0), per resource."""

    cpu: int = 0
    memory: int = 0


@dataclass(frozen=True)
class Measured:
    """One usage sample of an instance; None: not measured in that sample.
    `cpu_throttled`: the share (0..1) of the sample's CPU periods in which the kernel
    throttled the instance (None where the cgroup keeps no bandwidth statistics)."""

    cpu_cores: float | None = None
    memory_bytes: int | None = None
    cpu_throttled: float | None = None


@dataclass(frozen=True)
class ElasticInstance:
    key: str
    cpu_min: float
    cpu_max: float
    memory_min: int
    memory_max: int
    grant: Grant  # what it has now (its slot record)
    measured: Measured = Measured()
    streak: Streak = Streak()


@dataclass(frozen=True)
class Change:
    """A changed grant and the sample that decided it (for the event)."""

    key: str
    old: Grant
    new: Grant
    measured: Measured


@dataclass(frozen=True)
class _Track:
    """One resource of one instance, in whole units of its grant (percents of a core,
    bytes); `used` may be fractional."""

    lo: float
    hi: float
    current: float
    used: float | None
    streak: int
    throttled: float | None = None  # CPU only: share of periods throttled (see ElasticPolicy)


def usage_grants(cpu_capacity: float, memory_capacity: float,
                 instances: Sequence[ElasticInstance],
                 policy: ElasticPolicy = ElasticPolicy()
                 ) -> tuple[list[Change], dict[str, Streak]]:
    """One sample's decision for the live instances of one node: the grants that change
    (sorted by key) and every instance's streak after the sample. Pure and deterministic.
    Grants stay in [min, max] (MemoryHigh at most MEMORY_HIGH_FRACTION of max, MemoryMax and
    CPUWeight untouched) and their sum stays within the node's capacity whenever the
    minimums fit it."""
    ordered = sorted(instances, key=lambda i: i.key)
    cpu = [_cpu_track(i) for i in ordered]
    memory = [_Track(i.memory_min, max(i.memory_min, int(i.memory_max * MEMORY_HIGH_FRACTION)),
                     i.grant.memory_high, i.measured.memory_bytes, i.streak.memory)
              for i in ordered]
    new_cpu, cpu_streaks = _resource(_percents(cpu_capacity, math.floor), cpu, policy)
    new_memory, memory_streaks = _resource(memory_capacity, memory, policy)
    changes, streaks = [], {}
    for n, inst in enumerate(ordered):
        new = replace(inst.grant, cpu_quota_percent=new_cpu[n], memory_high=new_memory[n])
        cpu_streak = 0 if new.cpu_quota_percent != inst.grant.cpu_quota_percent \
            else cpu_streaks[n]
        memory_streak = 0 if new.memory_high != inst.grant.memory_high else memory_streaks[n]
        streaks[inst.key] = Streak(cpu_streak, memory_streak)
        if new != inst.grant:
            changes.append(Change(inst.key, inst.grant, new, inst.measured))
    return changes, streaks


def _cpu_track(inst: ElasticInstance) -> _Track:
    """CPU in percents of a core: the floor rounded up to a whole percent (at least 1, the
    smallest quota), the ceiling rounded down to one (never above max)."""
    lo = max(1, int(_percents(inst.cpu_min, math.ceil)))
    used = inst.measured.cpu_cores
    hi = max(lo, int(_percents(inst.cpu_max, math.floor)))
    return _Track(lo, hi, inst.grant.cpu_quota_percent, None if used is None else used * 100,
                  inst.streak.cpu, inst.measured.cpu_throttled)


def _percents(cores: float, rounding: Callable[[float], int]) -> float:
    """Cores in whole percents of a core, rounded as told (an unlimited node stays so)."""
    return cores if math.isinf(cores) else rounding(round(cores * 100, 6))


def _resource(capacity: float, tracks: Sequence[_Track],
              policy: ElasticPolicy) -> tuple[list[int], list[int]]:
    """New grants (whole units) and streaks of one resource on one node."""
    streaks = [_next_streak(t, policy) for t in tracks]
    wants = [_want(t, s, policy) for t, s in zip(tracks, streaks, strict=True)]
    fitted = _whole_units(capacity, tracks, _water_fill(capacity, tracks, wants))
    # hysteresis: small moves are not made, as long as what is kept still fits the node
    # (a move onto min or max the instance asked for is always made: the floor and the
    # ceiling are reachable; a small cut onto its floor that it did not ask for is not: an
    # instance whose range is a unit or two went back and forth between them while its
    # neighbours' asks moved, found by hypothesis)
    kept = [t.current if abs(f - t.current) < policy.min_change * max(t.current, 1e-9)
            and t.lo <= t.current <= t.hi and not _asked_edge(t, f, w) else f
            for t, f, w in zip(tracks, fitted, wants, strict=True)]
    if sum(kept) <= capacity * (1 + 1e-9):
        fitted = kept
    return fitted, streaks


def _asked_edge(t: _Track, fitted: int, want: float) -> bool:
    """The fitted grant is the floor the instance asked to fall to, or the ceiling it asked
    to rise to."""
    return (fitted == t.lo and want <= t.lo) or (fitted == t.hi and want >= t.hi)


def _pressing(t: _Track, policy: ElasticPolicy) -> bool:
    """Using almost all of its grant, or (CPU) throttled in a sustained share of periods."""
    return (t.used is not None and policy.presses(t.used, t.current)) or \
        (t.throttled is not None and t.throttled >= policy.throttled)


def _next_streak(t: _Track, policy: ElasticPolicy) -> int:
    if t.current <= 0:
        return 0
    if _pressing(t, policy):
        return max(t.streak, 0) + 1
    if t.used is None:
        return 0
    if t.used <= policy.idle * t.current:
        return min(t.streak, 0) - 1
    return 0


def _want(t: _Track, streak: int, policy: ElasticPolicy) -> int:
    """What the instance asks for after this sample, in whole units within [lo, hi]. Rounded
    so that the usage lands in the dead band: a rise up (usage at most `target` of it), a fall
    down but never under usage / target (at a few units, a fall rounded down to under the
    usage would press at once)."""
    current = min(max(t.current, t.lo), t.hi)
    if streak >= policy.samples:  # pressing by usage or throttling (usage may be unknown)
        in_band = 0 if t.used is None else math.ceil(round(t.used / policy.target, 6))
        return min(t.hi, max(math.ceil(round(current * (1 + policy.step), 6)), in_band))
    if streak <= -policy.idle_samples and t.used is not None:
        in_band = math.ceil(round(t.used / policy.target, 6))
        return max(t.lo, in_band, math.floor(round(current / (1 + policy.step), 6)))
    return current


def _water_fill(capacity: float, tracks: Sequence[_Track], wants: Sequence[float]) -> list[float]:
    """Every minimum, plus the room above them shared among the asks: all of each ask when
    they fit, else the same level for all, weighted by the elastic range (max - min), no one
    above its ask."""
    room = capacity - sum(t.lo for t in tracks)
    asks = [max(0.0, w - t.lo) for t, w in zip(tracks, wants, strict=True)]
    if sum(asks) <= room:
        return [t.lo + a for t, a in zip(tracks, asks, strict=True)]
    if room <= 0:
        return [t.lo for t in tracks]
    weights = [t.hi - t.lo for t in tracks]
    left = room
    pending = sorted((a / w, a, w) for a, w in zip(asks, weights, strict=True) if a > 0)
    weight_left = sum(w for _, _, w in pending)
    for ratio, ask, weight in pending:  # the smallest asks (for their weight) are met in full
        if ratio * weight_left > left:
            break
        left, weight_left = left - ask, weight_left - weight
    level = left / weight_left if weight_left > 0 else math.inf
    return [t.lo + min(a, level * w) for t, a, w in zip(tracks, asks, weights, strict=True)]


def _whole_units(capacity: float, tracks: Sequence[_Track], shares: Sequence[float]) -> list[int]:
    """The water-filled shares in whole units that use the same room: each rounded down,
    then the units that lost (the room less those) go one each to the largest fractions, the
    first instance (by key) on a tie. A share is only fractional when it was cut below its
    ask (a whole number), so no one gets more than its ask."""
    units = [max(t.lo, math.floor(round(s, 6))) for t, s in zip(tracks, shares, strict=True)]
    spare = math.floor(round(capacity - sum(units), 6)) if math.isfinite(capacity) else 0
    fractions = sorted(((round(s - u, 6), -n)
                        for n, (s, u) in enumerate(zip(shares, units, strict=True))
                        if round(s - u, 6) > 0), reverse=True)
    for _, minus_n in fractions[:max(0, spare)]:
        units[-minus_n] += 1
    return units
