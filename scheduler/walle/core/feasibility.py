"""Feasibility: can this node take one more instance of this job?

Two forms of the same rules: `feasible()` is the fast yes/no used on sampled candidates;
`rejections()` lists every reason a node fails (all filters, not just the first), used to say
why nothing fits ("7 nodes: not enough memory; 2 nodes: draining") and by `explain`.
A job is compiled once per plan into a `JobReq` (kube's PreFilter): integer resource minimums
(cpu in millicores so sums stay exact), compiled node rules, and the placement rules that
depend on where the job's other instances are (distinct_hosts, max_per).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from walle.core.model import Node
from walle.jobspec.grammar import CONTAINER_KINDS
from walle.jobspec.model import Constraint, JobSpec
from walle.jobspec.regex import compile_pattern

if TYPE_CHECKING:
    from walle.core.state import ClusterIndex

MILLI = 1000
NODE_OPERATORS = ("eq", "ne", "in", "not_in", "regex")
ATTRIBUTES = ("name", "zone", "rack")


def millicores(cores: float) -> int:
    """Cores to integer millicores, rounding a request up (never under-reserve)."""
    return math.ceil(round(cores * MILLI, 6))


@dataclass(frozen=True, slots=True)
class NodeRule:
    """A hard constraint that depends only on the node (eq/ne/in/not_in/regex)."""

    attribute: str
    operator: str
    values: tuple[str, ...]
    pattern: Any = None  # an RE2 pattern (walle.jobspec.regex): linear-time search
    why: str = ""  # an implicit rule's own refusal reason (runtime_rule)

    def holds(self, node: Node) -> bool:
        value = node.attribute(self.attribute)
        op = self.operator
        if op == "eq":
            return value == self.values[0]
        if op == "ne":
            return value != self.values[0]
        if op == "in":
            return value in self.values
        if op == "not_in":
            return value not in self.values
        return value is not None and self.pattern.search(value) is not None  # regex

    @property
    def reason(self) -> str:
        if self.why:
            return self.why
        shown = self.values[0] if len(self.values) == 1 else ",".join(self.values)
        return f"constraint {self.attribute} {self.operator} {shown}"


@dataclass(slots=True)
class JobReq:
    """One job compiled for placement. Mutable only in its rule cache."""

    name: str
    spec: JobSpec
    priority: int
    strategy: str  # "binpack" | "spread"
    cpu: int  # millicores guaranteed
    memory: int
    disk: int
    gpus: int
    rules: tuple[NodeRule, ...]
    distinct_hosts: bool
    max_per: tuple[tuple[str, int], ...]  # (attribute, most instances per value)
    data: frozenset[str]
    spread_domains: bool  # score failure-domain spread and anti-affinity
    full_scan: bool
    ports: tuple[int, ...] = ()  # static ports: a node where one is held cannot take it
    dynamic: tuple[str, ...] = ()  # labels that take a port of the node's range each
    simple: bool = True  # no node rules, distinct_hosts, max_per or ports: resources decide
    rule_cache: dict[int, bool] = field(default_factory=dict)


def compile_job(spec: JobSpec, *, default_strategy: str, full_scan: bool = False) -> JobReq:
    rules, max_per, distinct = [], [], False
    for n, c in enumerate(spec.constraints):
        where = f"job {spec.name!r}: constraints[{n}]"
        _check_attribute(c, where)
        if c.operator == "distinct_hosts":
            distinct = True
        elif c.operator == "max_per":
            if not isinstance(c.value, int) or isinstance(c.value, bool) or c.value < 1:
                raise ValueError(f"{where}: max_per needs a positive integer value, "
                                 f"got {c.value!r}")
            max_per.append((c.attribute, c.value))
        elif c.operator in NODE_OPERATORS:
            rules.append(_node_rule(c, where))
        else:
            raise ValueError(f"{where}: operator {c.operator!r} is unknown; use one of "
                             f"{', '.join(NODE_OPERATORS)}, distinct_hosts, max_per")
    runtime = runtime_rule(spec.runtime.kind)
    if runtime is not None:
        rules.append(runtime)
    strategy = spec.strategy or default_strategy
    if strategy not in ("binpack", "spread"):
        raise ValueError(f"job {spec.name!r}: strategy {strategy!r} must be binpack or spread")
    res = spec.resources
    ports, dynamic = spec.static_ports(), spec.dynamic_labels
    return JobReq(
        name=spec.name, spec=spec, priority=spec.priority, strategy=strategy,
        cpu=millicores(res.cpu.min), memory=int(res.memory.min), disk=int(res.disk),
        gpus=int(res.gpus), rules=tuple(rules), distinct_hosts=distinct,
        max_per=tuple(max_per), data=frozenset(spec.data),
        spread_domains=strategy == "spread" or (spec.kind == "service" and spec.count > 1),
        full_scan=full_scan, ports=ports, dynamic=dynamic,
        simple=not (rules or distinct or max_per or ports or dynamic),
    )


# Container runtimes run only where the node says it can run them: the node role sets the
# label from facts (walle_node.runtime_labels: cgroup v2 with its controllers, the runtime's
# program installed). A job of that runtime (jobspec's CONTAINER_KINDS) gets this rule without
# asking for it.


def runtime_label(kind: str) -> str:
    """The node label saying a node can run `kind` containers (label.runtime_<kind>)."""
    return f"runtime_{kind}"


def runtime_rule(kind: str) -> NodeRule | None:
    """The implicit node rule of a container runtime; None for exec (every node runs it)."""
    if kind not in CONTAINER_KINDS:
        return None
    label = runtime_label(kind)
    return NodeRule(f"label.{label}", "eq", ("true",),
                    why=f"runtime {kind}: node cannot run {kind} containers (no label "
                        f"{label}=true: needs cgroup v2 with its controllers and the runtime "
                        "installed)")


def _check_attribute(c: Constraint, where: str) -> None:
    if c.operator == "distinct_hosts":
        return
    if c.attribute not in ATTRIBUTES and not (c.attribute.startswith("label.")
                                              and len(c.attribute) > 6):
        raise ValueError(f"{where}: attribute {c.attribute!r} is unknown; use name, zone, "
                         "rack or label.<key>")


def _node_rule(c: Constraint, where: str) -> NodeRule:
    values = c.value if isinstance(c.value, tuple) else (c.value,)
    if any(v is None for v in values) or not values:
        raise ValueError(f"{where}: operator {c.operator} needs a value")
    values = tuple(str(v) for v in values)
    pattern = None
    if c.operator == "regex":
        try:
            pattern = compile_pattern(values[0])
        except ValueError as exc:
            raise ValueError(f"{where}: regex {values[0]!r} does not compile: {exc}") from None
    return NodeRule(c.attribute, c.operator, values, pattern)


def feasible(ix: ClusterIndex, job: JobReq, i: int) -> bool:
    """The fast check: True when node i can take one more instance of `job` now."""
    return (ix.ready[i] and ix.free_cpu[i] >= job.cpu and ix.free_mem[i] >= job.memory
            and ix.free_disk[i] >= job.disk and ix.free_gpu[i] >= job.gpus
            and (job.simple or _rules_ok(ix, job, i)))


def _rules_ok(ix: ClusterIndex, job: JobReq, i: int) -> bool:
    if job.rules:
        ok = job.rule_cache.get(i)
        if ok is None:
            node = ix.nodes[i]
            ok = job.rule_cache[i] = all(rule.holds(node) for rule in job.rules)
        if not ok:
            return False
    if job.distinct_hosts and ix.count_on(job.name, i):
        return False
    if any(ix.ports_on[i].get(p) for p in job.ports):
        return False
    if job.dynamic and ix.free_ports(i) < len(job.dynamic):
        return False
    for attribute, limit in job.max_per:
        value = ix.nodes[i].attribute(attribute) or ""
        if ix.domain_counts(job.name, attribute).get(value, 0) >= limit:
            return False
    return True


def rejections(ix: ClusterIndex, job: JobReq, i: int, *, resources: bool = True) -> list[str]:
    """Every reason node i cannot take one more instance of `job` (empty: feasible)."""
    node = ix.nodes[i]
    reasons = [] if ix.ready[i] else [f"node {node.state}"]
    if resources:
        for have, need, what in ((ix.free_cpu[i], job.cpu, "cpu"),
                                 (ix.free_mem[i], job.memory, "memory"),
                                 (ix.free_disk[i], job.disk, "disk"),
                                 (ix.free_gpu[i], job.gpus, "gpus")):
            if have < need:
                reasons.append(f"not enough {what}")
    reasons.extend(rule.reason for rule in job.rules if not rule.holds(node))
    if job.distinct_hosts and ix.count_on(job.name, i):
        reasons.append("distinct_hosts: an instance is already there")
    reasons.extend(f"port {p} in use" for p in job.ports if ix.ports_on[i].get(p))
    if job.dynamic and ix.free_ports(i) < len(job.dynamic):
        low, high = ix.port_range[i]
        reasons.append(f"port range {low}-{high} full")
    for attribute, limit in job.max_per:
        value = node.attribute(attribute) or ""
        if ix.domain_counts(job.name, attribute).get(value, 0) >= limit:
            reasons.append(f"max_per {attribute}: {limit} already in {value or '(unset)'}")
    return reasons


def summarise(reason_counts: dict[str, int]) -> str:
    """"7 nodes: not enough memory; 2 nodes: node draining", most common first."""
    ordered = sorted(reason_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "; ".join(f"{n} node{'s' if n != 1 else ''}: {reason}" for reason, n in ordered)
