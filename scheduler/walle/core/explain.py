"""Why a job's next instance would go where it goes: every node, every filter, every score.

`walle plan JOB --explain` prints `format_nodes(explain(...))` for one more instance after the
leader's plan (service/dryrun.py). This is the full scan (no sampling), so it shows what the
bounded search chooses among.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from walle.core.feasibility import compile_job, rejections, summarise
from walle.core.model import Allocation, Node
from walle.core.placement import PlacementConfig, Placer
from walle.core.scoring import active_scorers, breakdown, total
from walle.core.state import ClusterIndex, held_from
from walle.jobspec.model import JobSpec


@dataclass(frozen=True)
class NodeVerdict:
    node: str
    state: str
    reasons: tuple[str, ...]  # empty: feasible
    scores: tuple[tuple[str, float], ...]  # per scorer, 0..100 (feasible nodes only)
    total: float | None

    @property
    def feasible(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class Explanation:
    job: str
    strategy: str
    scorers: tuple[str, ...]
    chosen: str | None
    verdicts: tuple[NodeVerdict, ...]  # feasible by score (best first), then rejected
    rejected: tuple[tuple[str, int], ...]  # reason -> nodes, most first
    summary: str  # "7 nodes: not enough memory; 2 nodes: node draining"
    evictions: tuple[str, ...] = ()  # instance keys preemption would evict when nothing fits


def explain(job: JobSpec, nodes: Iterable[Node] | Mapping[str, Node],
            allocations: Iterable[Allocation], *, config: PlacementConfig | None = None,
            failed_nodes: Iterable[str] = ()) -> Explanation:
    config = config or PlacementConfig()
    ix = ClusterIndex(nodes.values() if isinstance(nodes, Mapping) else nodes)
    for a in allocations:
        if a.live and a.node in ix.pos and ix.ready[ix.pos[a.node]]:
            ix.reserve(ix.pos[a.node], held_from(a))
    req = compile_job(job, default_strategy=config.default_strategy)
    avoid = frozenset(ix.pos[n] for n in failed_nodes if n in ix.pos)
    scorers = active_scorers(req, config.weights, avoid)
    verdicts, reasons = [], {}
    for i, node in enumerate(ix.nodes):
        why = rejections(ix, req, i)
        for reason in why:
            reasons[reason] = reasons.get(reason, 0) + 1
        scores = () if why else tuple(breakdown(ix, req, i, avoid, scorers).items())
        score = None if why else round(total(ix, req, i, avoid, scorers), 2)
        verdicts.append(NodeVerdict(node.name, node.state, tuple(why), scores, score))
    feasible = sorted((v for v in verdicts if v.feasible), key=lambda v: -v.total)
    evictions: tuple[str, ...] = ()
    if not feasible and config.preemption:
        choice = Placer(ix, config, random.Random(0)).preempt(req)
        if choice is not None:
            evictions = tuple(h.key for h in choice.evict)
    return Explanation(
        job=job.name, strategy=req.strategy, scorers=tuple(name for name, _, _ in scorers),
        chosen=feasible[0].node if feasible else None,
        verdicts=tuple(feasible + [v for v in verdicts if not v.feasible]),
        rejected=tuple(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        summary=summarise(reasons), evictions=evictions)


def format_explanation(exp: Explanation, limit: int = 20) -> str:
    """A text table: the best `limit` feasible nodes with each score, then rejections."""
    feasible = [v for v in exp.verdicts if v.feasible]
    head = [f"job {exp.job} ({exp.strategy}): {len(feasible)} of {len(exp.verdicts)} nodes "
            f"feasible; " + (f"best {exp.chosen}" if exp.chosen else "nothing fits")]
    if exp.summary:
        head.append(f"rejected: {exp.summary}")
    if exp.evictions:
        head.append(f"preemption would evict: {', '.join(exp.evictions)}")
    return "\n".join(head + ["", format_nodes(exp, limit)])


def format_nodes(exp: Explanation, limit: int = 20) -> str:
    """The node table alone: the best `limit` feasible nodes with each score, then the
    rejected ones with why."""
    feasible = [v for v in exp.verdicts if v.feasible]
    columns = ["NODE", "STATE", "TOTAL", *(s.upper() for s in exp.scorers), "REJECTED BECAUSE"]
    rows = [[v.node, v.state, f"{v.total:.1f}", *(f"{s:.1f}" for _, s in v.scores), "-"]
            for v in feasible[:limit]]
    rows += [[v.node, v.state, "-", *("-" for _ in exp.scorers), "; ".join(v.reasons)]
             for v in exp.verdicts if not v.feasible][:max(0, limit - len(rows))]
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
             for row in [columns, *rows]]
    hidden = len(exp.verdicts) - len(rows)
    tail = [f"... {hidden} more nodes"] if hidden > 0 else []
    return "\n".join(lines + tail)
