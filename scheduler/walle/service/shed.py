"""The leader's memory for shedding (core/shed.py): usage readings become node samples and
streaks, shed moves are remembered for the bound per minute, and the whole is the `Pressure`
the leader's decision (service/decide.py) takes and publishes for `walle plan`
(walle/config/pressure).

Like the grants' streaks, this lives in the leader's memory only: a new leader samples again
from nothing (`samples` readings before a node counts as under sustained pressure), so a
failover can delay a move but never hurries one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from walle.adapters.usage import measure
from walle.core.grants import ElasticPolicy
from walle.core.model import Allocation, Node
from walle.core.plan import Plan
from walle.core.shed import (
    WINDOW,
    Load,
    Measure,
    NodeSample,
    Pressure,
    ShedPolicy,
    instance_load,
    next_streaks,
    sustained,
)
from walle.naming import instance_id
from walle.service.elastic import Reading


@dataclass
class Shedder:
    policy: ShedPolicy = field(default_factory=ShedPolicy)
    elastic: ElasticPolicy = field(default_factory=ElasticPolicy)
    samples: dict[str, NodeSample] = field(default_factory=dict)
    loads: dict[str, dict[str, Load]] = field(default_factory=dict)  # node -> key -> load
    moved: list[tuple[float, str]] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.policy.moves_per_minute > 0

    def pressure(self) -> Pressure | None:
        """What the decision sheds with (None when shedding is off). Only the instances of
        nodes pressed in their last sample are in it: the others cannot be shed."""
        if not self.enabled:
            return None
        instances = {key: load for name, sample in self.samples.items()
                     if sample.cpu_streak or sample.memory_streak
                     for key, load in self.loads.get(name, {}).items()}
        return Pressure(dict(self.samples), instances, tuple(self.moved), self.policy)

    def moves_made(self, plan: Plan, now: float) -> None:
        """The plan's shed moves count against the bound from `now`; their two nodes are
        sampled afresh (the source's streak starts again, the target is no target until its
        load with the newcomer is measured)."""
        keep = max(WINDOW, self.policy.cooldown)
        self.moved = [(when, key) for when, key in self.moved if now - when < keep]
        for m in plan.migrates:
            if m.shed:
                self.moved.append((now, m.old.key))
                for name in (m.old.node, m.new.node):
                    self.samples.pop(name, None)
                    self.loads.pop(name, None)

    def observe(self, nodes: Mapping[str, Node], allocations: Collection[Allocation],
                reading: Reading, settling: Collection[str]) -> bool:
        """One reading: a sample of every ready node not settling (something placed, moved,
        stopped or in flight there) whose running instances were all measured; a node
        without instances is a quiet sample. Any other node has no sample (not a target, its
        streak restarts). True when some node is under sustained pressure now."""
        if not self.enabled:
            return False
        by_node: dict[str, list[Allocation]] = {name: [] for name, node in nodes.items()
                                                 if node.state == "ready"}
        for a in allocations:
            if a.live and a.node in by_node:
                by_node[a.node].append(a)
        samples: dict[str, NodeSample] = {}
        loads: dict[str, dict[str, Load]] = {}
        for name, allocs in sorted(by_node.items()):
            if name in settling or any(a.state != "running" or a.grant is None
                                       or None in (a.grant.cpu_quota_percent,
                                                   a.grant.memory_high) for a in allocs):
                continue
            measured = {a.key: self._load(a, reading) for a in allocs}
            if any(load is None for load in measured.values()):
                continue  # not all measured: nothing known of the node
            loads[name] = {k: v for k, v in measured.items() if v is not None}
            total = sum(loads[name].values(), Load())
            samples[name] = next_streaks(nodes[name], total, self.samples.get(name),
                                         self.policy)
        self.samples, self.loads = samples, loads
        return any(sustained(s, self.policy) for s in samples.values())

    def _load(self, a: Allocation, reading: Reading) -> Load | None:
        used = reading.usage.get((a.node, instance_id(a.job, a.slot)))
        if used is None:
            return None
        cpu, memory = measure(used, "cpu_percent"), measure(used, "memory_bytes")
        if cpu is None and memory is None:
            return None
        grant = a.grant
        assert grant is not None and grant.memory_high is not None  # observe checked
        return instance_load(Measure(None if cpu is None else cpu / 100, memory,
                                     grant.cpu_quota_percent / 100, grant.memory_high,
                                     a.ceiling.cpu, a.ceiling.memory), self.elastic)
