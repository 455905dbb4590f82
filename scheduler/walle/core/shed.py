"""Shedding: a node under sustained pressure hands movable work to a quieter node. Pure.

One place for the whole idea (docs/core.md, "Shedding under pressure"):
- `sample_node` reads one usage sample of a node: per resource (cpu in cores, memory in bytes)
  what its instances use and what they want: an instance pressing on its grant (the elastic
  policy's `press`) below its ceiling wants what usage_grants would ask for (its grant raised
  by `step`, at least its use / `target`), any other instance its use. The node is pressed
  in a resource when the use reaches `ShedPolicy.use` of its capacity, or when the wants
  exceed the capacity (instances want more than the node can grant).
- `next_streaks` counts consecutive pressed samples per node and resource; `samples` in a
  row is sustained pressure.
- `choose_moves` (called by the reconciler, core/reconcile.py, with the round's feasibility)
  picks, per node under sustained pressure, one running service instance to move: lowest
  priority first, then the smallest that relieves the pressure alone (else the largest, which
  relieves most), never one moved for pressure within `cooldown`, onto a feasible node that
  is not pressed itself and where the instance's wants fit with `headroom` to spare (so it
  does not press there: no ping-pong), the least loaded such node. At most
  `moves_per_minute` such moves in any 60 s, cluster-wide (the moves already made are an
  input: `Pressure.moved`).
No clock and no randomness: `now` is passed in, ties are broken by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from walle.core.grants import MEMORY_HIGH_FRACTION, ElasticPolicy
from walle.core.model import Allocation, Node

RESOURCES = ("cpu", "memory")
WINDOW = 60.0  # the bound on moves is per this many seconds


@dataclass(frozen=True)
class ShedPolicy:
    samples: int = 3  # consecutive pressed samples: sustained pressure
    use: float = 0.9  # a node using this fraction of a resource is pressed in it
    headroom: float = 0.2  # a target stays this fraction below `use` (and below full) after
    moves_per_minute: int = 1  # cluster-wide bound; 0: never shed
    cooldown: float = 600.0  # an instance moved for pressure is not moved for it again sooner

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("shed policy: samples must be 1 or more")
        if not 0 < self.use <= 1 or not 0 <= self.headroom < self.use:
            raise ValueError("shed policy: 0 < use <= 1 and 0 <= headroom < use")
        if self.moves_per_minute < 0 or self.cooldown < 0:
            raise ValueError("shed policy: moves_per_minute and cooldown must be 0 or more")


@dataclass(frozen=True)
class Load:
    """Use and wants of one instance or one node, per resource (cores, bytes)."""

    cpu_used: float = 0.0
    cpu_wanted: float = 0.0
    memory_used: float = 0.0
    memory_wanted: float = 0.0

    def used(self, resource: str) -> float:
        return self.cpu_used if resource == "cpu" else self.memory_used

    def wanted(self, resource: str) -> float:
        return self.cpu_wanted if resource == "cpu" else self.memory_wanted

    def __add__(self, other: Load) -> Load:
        return Load(self.cpu_used + other.cpu_used, self.cpu_wanted + other.cpu_wanted,
                    self.memory_used + other.memory_used,
                    self.memory_wanted + other.memory_wanted)


@dataclass(frozen=True)
class NodeSample:
    """One node's latest sample and its streaks of pressed samples, per resource."""

    load: Load
    cpu_streak: int = 0
    memory_streak: int = 0

    def streak(self, resource: str) -> int:
        return self.cpu_streak if resource == "cpu" else self.memory_streak


@dataclass(frozen=True)
class Pressure:
    """What the reconciler needs to shed: every sampled node, every measured instance (by
    key, on its node), and the shed moves already made (when, instance key)."""

    nodes: Mapping[str, NodeSample] = field(default_factory=dict)
    instances: Mapping[str, Load] = field(default_factory=dict)
    moved: tuple[tuple[float, str], ...] = ()
    policy: ShedPolicy = ShedPolicy()


@dataclass(frozen=True)
class Measure:
    """One instance's sample as the leader reads it: use (None: not measured) and grant."""

    cpu_used: float | None  # cores
    memory_used: float | None  # bytes
    cpu_granted: float  # cores (CPUQuota)
    memory_granted: float  # bytes (MemoryHigh)
    cpu_max: float
    memory_max: float


def instance_load(m: Measure, elastic: ElasticPolicy | None = None) -> Load:
    """Use and wants of one instance: pressing on its grant below its ceiling, it wants what
    usage_grants would ask for (the grant raised by `step`, at least use / `target`); else
    its use. Unmeasured: nothing."""
    elastic = elastic or ElasticPolicy()
    memory_ceiling = max(m.memory_granted, m.memory_max * MEMORY_HIGH_FRACTION)
    out = []
    for used, granted, ceiling in ((m.cpu_used, m.cpu_granted, m.cpu_max),
                                   (m.memory_used, m.memory_granted, memory_ceiling)):
        if used is None:
            out += [0.0, 0.0]
            continue
        want = used
        if granted > 0 and elastic.presses(used, granted) and granted < ceiling:
            want = max(used, min(ceiling, elastic.rise(granted, used)))
        out += [float(used), float(want)]
    return Load(*out)


def pressed(node: Node, load: Load, policy: ShedPolicy) -> dict[str, bool]:
    """Per resource: is this sample of `node` pressed?"""
    return {r: load.used(r) >= policy.use * _capacity(node, r)
            or load.wanted(r) > _capacity(node, r) * (1 + 1e-9) for r in RESOURCES}


def next_streaks(node: Node, load: Load, before: NodeSample | None,
                 policy: ShedPolicy) -> NodeSample:
    """The node's sample after this one: its streaks grow while pressed, restart when not."""
    now = pressed(node, load, policy)
    before = before or NodeSample(Load())
    return NodeSample(load, before.cpu_streak + 1 if now["cpu"] else 0,
                      before.memory_streak + 1 if now["memory"] else 0)


def sustained(sample: NodeSample, policy: ShedPolicy) -> tuple[str, ...]:
    """The resources a node is under sustained pressure in."""
    return tuple(r for r in RESOURCES if sample.streak(r) >= policy.samples)


def moves_left(pressure: Pressure, now: float) -> int:
    """How many shed moves the bound allows now."""
    recent = sum(1 for when, _ in pressure.moved if now - WINDOW < when <= now)
    return max(0, pressure.policy.moves_per_minute - recent)


@dataclass(frozen=True)
class ShedMove:
    alloc: Allocation
    target: str
    reason: str
    score: float  # the target's heaviest resource after the move, as a fraction


def choose_moves(pressure: Pressure, nodes: Mapping[str, Node], running: Iterable[Allocation],
                 movable: Callable[[Allocation], bool],
                 feasible: Callable[[Allocation, str], bool], now: float) -> list[ShedMove]:
    """The shed moves to make now (see the module's text). `running`: the instances that
    stay where they are this round; `movable(a)`: the caller's rule (services only, not
    being moved already); `feasible(a, node)`: the round's feasibility of node for a
    (reservations, constraints, ports), called for each target in turn."""
    policy = pressure.policy
    budget = moves_left(pressure, now)
    if budget <= 0:
        return []
    recently = {key for when, key in pressure.moved if now - policy.cooldown < when <= now}
    loads = {name: s.load for name, s in pressure.nodes.items()}
    by_node: dict[str, list[Allocation]] = {}
    for a in running:
        by_node.setdefault(a.node, []).append(a)
    out: list[ShedMove] = []
    for name in sorted(pressure.nodes):
        node, sample = nodes.get(name), pressure.nodes[name]
        tight = sustained(sample, policy)
        if len(out) >= budget or node is None or node.state != "ready" or not tight:
            continue
        candidates = [a for a in by_node.get(name, ())
                      if a.key in pressure.instances and a.key not in recently and movable(a)]
        for a in _by_preference(candidates, pressure, node, sample.load, tight):
            target = _quietest(a, pressure, nodes, loads, name, feasible)
            if target is None:
                continue
            load = pressure.instances[a.key]
            loads[target] = loads.get(target, Load()) + load
            out.append(ShedMove(a, target, _reason(name, node, sample, tight),
                                _heaviest(nodes[target], loads[target])))
            break
    return out


def _by_preference(candidates: Sequence[Allocation], pressure: Pressure, node: Node,
                   load: Load, tight: Sequence[str]) -> list[Allocation]:
    """Lowest priority first; within a priority the smallest that relieves the pressure
    alone, then the others largest first (they relieve most); then by key."""
    policy = pressure.policy

    def relieves(own: Load) -> bool:
        return all(load.used(r) - own.used(r) < policy.use * _capacity(node, r)
                   and load.wanted(r) - own.wanted(r) <= _capacity(node, r) for r in tight)

    def key(a: Allocation) -> tuple:
        own = pressure.instances[a.key]
        size = sum(own.wanted(r) / _capacity(node, r) for r in tight)
        return (a.priority, not relieves(own), size if relieves(own) else -size, a.key)

    return sorted(candidates, key=key)


def _quietest(a: Allocation, pressure: Pressure, nodes: Mapping[str, Node],
              loads: Mapping[str, Load], source: str,
              feasible: Callable[[Allocation, str], bool]) -> str | None:
    """The least loaded node (after the move) that takes `a` with headroom, or None."""
    policy, own = pressure.policy, pressure.instances[a.key]
    best: tuple[float, str] | None = None
    for name in sorted(pressure.nodes):
        node, sample = nodes.get(name), pressure.nodes[name]
        if name == source or node is None or node.state != "ready":
            continue
        if sample.cpu_streak or sample.memory_streak:
            continue  # pressed itself (not even sustained): not quieter
        after = loads.get(name, Load()) + own
        if any(after.used(r) > (policy.use - policy.headroom) * _capacity(node, r)
               or after.wanted(r) > (1 - policy.headroom) * _capacity(node, r)
               for r in RESOURCES):
            continue
        score = _heaviest(node, after)
        if (best is None or (score, name) < best) and feasible(a, name):
            best = (score, name)
    return None if best is None else best[1]


def _heaviest(node: Node, load: Load) -> float:
    return round(max(load.wanted(r) / _capacity(node, r) for r in RESOURCES), 4)


def _capacity(node: Node, resource: str) -> float:
    return node.capacity.cpu if resource == "cpu" else float(node.capacity.memory)


def _reason(name: str, node: Node, sample: NodeSample, tight: Sequence[str]) -> str:
    """"node2 under cpu pressure 3 samples (used 3.9 of 4 cores, wanted 5.2)"."""
    parts = []
    for r in tight:
        used, wanted, cap = sample.load.used(r), sample.load.wanted(r), _capacity(node, r)
        parts.append(f"{r} pressure {sample.streak(r)} samples ("
                     f"used {_amount(r, used)} of {_amount(r, cap)}, "
                     f"wanted {_amount(r, wanted)})")
    return f"{name} under " + "; ".join(parts)


def _amount(resource: str, value: float) -> str:
    if resource == "cpu":
        return f"{value:.2f} cores"
    return f"{value / (1 << 20):.0f}MiB"


def pressure_to_json(pressure: Pressure) -> dict:
    """The value the leader publishes for `walle plan` (walle/config/pressure)."""
    p = pressure.policy
    return {"policy": {"samples": p.samples, "use": p.use, "headroom": p.headroom,
                       "moves_per_minute": p.moves_per_minute, "cooldown": p.cooldown},
            "nodes": {name: {"load": _load_json(s.load), "cpu_streak": s.cpu_streak,
                             "memory_streak": s.memory_streak}
                      for name, s in sorted(pressure.nodes.items())},
            "instances": {key: _load_json(load)
                          for key, load in sorted(pressure.instances.items())},
            "moved": [[when, key] for when, key in pressure.moved]}


def pressure_from_json(body: Mapping) -> Pressure:
    """Inverse of pressure_to_json; ValueError names what is wrong (the value comes from
    Consul: untrusted)."""
    if not isinstance(body, Mapping):
        raise ValueError("pressure: an object")
    policy = body.get("policy", {})
    if not isinstance(policy, Mapping):
        raise ValueError("pressure.policy: an object")
    try:
        shed = ShedPolicy(**{k: policy[k] for k in ShedPolicy.__dataclass_fields__
                             if k in policy})
    except TypeError as err:
        raise ValueError(f"pressure.policy: {err}") from None
    nodes = {}
    for name, entry in _mapping(body, "nodes").items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"pressure.nodes.{name}: an object")
        nodes[str(name)] = NodeSample(_load(entry.get("load"), f"pressure.nodes.{name}.load"),
                                      _count(entry.get("cpu_streak"), name),
                                      _count(entry.get("memory_streak"), name))
    instances = {str(key): _load(v, f"pressure.instances.{key}")
                 for key, v in _mapping(body, "instances").items()}
    moved = body.get("moved", [])
    if not isinstance(moved, list) or not all(
            isinstance(m, list) and len(m) == 2 and _number(m[0]) and isinstance(m[1], str)
            for m in moved):
        raise ValueError("pressure.moved: a list of [time, instance]")
    return Pressure(nodes, instances, tuple((float(w), k) for w, k in moved), shed)


def _load_json(load: Load) -> list[float]:
    return [load.cpu_used, load.cpu_wanted, load.memory_used, load.memory_wanted]


def _load(value: object, where: str) -> Load:
    if not isinstance(value, list) or len(value) != 4 or not all(map(_number, value)):
        raise ValueError(f"{where}: four numbers (cpu used, wanted, memory used, wanted)")
    return Load(*(float(v) for v in value))


def _mapping(body: Mapping, name: str) -> Mapping:
    value = body.get(name, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"pressure.{name}: an object")
    return value


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"pressure.nodes.{name}: streaks are counts (0 or more)")
    return value


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) \
        and math.isfinite(value)


def describe_pressure(pressure: Pressure, now: float) -> list[str]:
    """For `walle plan --explain`: the nodes pressed in their last sample and the bound."""
    policy = pressure.policy
    lines = [f"shedding: a node pressed {policy.samples} samples in a row sheds; "
             f"{moves_left(pressure, now)} of {policy.moves_per_minute} move(s) left "
             f"this minute"]
    for name, sample in sorted(pressure.nodes.items()):
        for r in RESOURCES:
            if sample.streak(r):
                state = "sustained" if sample.streak(r) >= policy.samples else "not yet"
                lines.append(f"  {name}: {r} pressed {sample.streak(r)} sample(s) ({state}): "
                             f"used {_amount(r, sample.load.used(r))}, "
                             f"wanted {_amount(r, sample.load.wanted(r))}")
    return lines
