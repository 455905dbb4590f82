"""Choosing a node for one instance: bounded candidate search, scoring, preemption.

Cost per placement does not grow with the pool (Borg/Nomad): only a few feasible candidates
are scored.
- bin-pack: best fit from the capacity index (the open nodes whose scarcer free resource is
  the smallest that still has room), then the largest unused node; at most `scan_limit`
  index entries are examined on each path.
- spread: walk a seeded random permutation of all nodes from a rotating offset until
  `sample_limit` feasible nodes are found (Nomad's shuffled node iterator).
- full scan (config or job): every feasible node is scored.
When the fast paths find nothing, one full pass decides: it either finds what the bounds
missed or collects every rejection reason with counts. Then preemption may evict strictly
lower-priority instances.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from dataclasses import dataclass

from walle.core.feasibility import JobReq, feasible, rejections
from walle.core.scoring import Weights, active_scorers, total
from walle.core.state import ClusterIndex, Held


@dataclass(frozen=True)
class PlacementConfig:
    default_strategy: str = "binpack"
    sample_limit: int | None = None  # feasible nodes scored; None: max(2, log2 nodes)
    batch_sample_limit: int = 2  # batch jobs: power of two choices
    scan_limit: int = 64  # index entries examined per fast path before falling back
    full_scan: bool = False  # score every feasible node for every job
    full_scan_jobs: frozenset[str] = frozenset()  # ... or only for these jobs
    preemption: bool = True
    # plan each round in packing order first, priority order only if something is refused
    packing_order: bool = True
    weights: Weights = Weights()


@dataclass(frozen=True)
class Choice:
    node: int
    score: float
    evict: tuple[Held, ...] = ()


@dataclass(frozen=True)
class Refusal:
    reasons: dict[str, int]  # reason -> number of nodes rejected for it


class Placer:
    def __init__(self, ix: ClusterIndex, config: PlacementConfig, rng: random.Random) -> None:
        self.ix, self.config, self.rng = ix, config, rng
        n = max(ix.n, 2)
        self.limit = config.sample_limit or max(2, math.ceil(math.log2(n)))
        self._perm: list[int] | None = None
        self._offset = 0

    def place(self, job: JobReq, avoid: frozenset[int] = frozenset()) -> Choice | Refusal:
        """Pick a node for one more instance of `job`; does not reserve it."""
        candidates = self.candidates(job, avoid)
        if not candidates:  # the bounded paths missed: walk every node before giving up
            limit = len(self.ix.nodes) if self._full(job) else self.limit
            candidates = self._sample(job, limit)
        if not candidates:
            victims = self.preempt(job) if self.config.preemption else None
            return victims or Refusal(self.full_pass(job)[1])
        scorers = active_scorers(job, self.config.weights, avoid)
        best, best_score = -1, -1.0
        for i in candidates:  # candidates come in a seeded/index order: ties keep the first
            score = total(self.ix, job, i, avoid, scorers)
            if score > best_score:
                best, best_score = i, score
        return Choice(best, best_score)

    # -- candidate search -----------------------------------------------------------------
    def _full(self, job: JobReq) -> bool:
        return self.config.full_scan or job.full_scan or job.name in self.config.full_scan_jobs

    def candidates(self, job: JobReq, avoid: frozenset[int] = frozenset()) -> list[int]:
        if self._full(job):
            return [i for i in range(self.ix.n) if feasible(self.ix, job, i)]
        limit = self.limit if job.spec.kind != "batch" else self.config.batch_sample_limit
        if job.gpus:  # GPU nodes are few: look at them all
            fits = [i for i in self.ix.gpu_nodes if feasible(self.ix, job, i)]
            return sorted(fits, key=lambda i: (self.ix.free_gpu[i], i))[:self.limit]
        if job.strategy == "binpack" and self.ix.indexed:
            return self._best_fit(job, limit, wide=bool(avoid))
        return self._sample(job, limit)

    def _best_fit(self, job: JobReq, limit: int, wide: bool) -> list[int]:
        ix, scan = self.ix, self.config.scan_limit
        by_mem = ix.memory_heavy(job.cpu, job.memory)
        found = self._scan(job, ix.open, ix.need_key(job.cpu, job.memory), limit, [])
        if by_mem:  # the tightest nodes in the job's leading resource: complementary fits
            found = self._scan(job, ix.open_mem, job.memory, limit, found)
        else:
            found = self._scan(job, ix.open_cpu, job.cpu, limit, found)
        wide = wide or job.spread_domains or bool(job.data)  # other scorers need a choice
        if job.data:  # packing first: locality may choose among busy nodes, not open one
            found += [i for i in self._holders(job, limit, busy_only=True) if i not in found]
        if len(found) >= (2 if wide else 1):  # a single fit leaves spread no choice
            return found
        empties = (ix.empty[False, by_mem], ix.empty[True, by_mem])
        want = limit - len(found) if wide else 1
        for empty in empties:
            fresh = [i for *_, i in empty[:scan] if feasible(ix, job, i)][:want]
            if fresh:
                return found + fresh
        return found

    def _scan(self, job: JobReq, index: list, need: float, limit: int,
              found: list[int]) -> list[int]:
        """Up to `limit` more feasible nodes from `index`, tightest first."""
        start, want = bisect_left(index, (need, -1)), len(found) + limit
        for _, i in index[start:start + self.config.scan_limit]:
            if i not in found and feasible(self.ix, job, i):
                found.append(i)
                if len(found) >= want:
                    break
        return found

    def _holders(self, job: JobReq, limit: int, busy_only: bool = False) -> list[int]:
        """Feasible nodes holding any of the job's datasets (soft data affinity)."""
        ix, found = self.ix, []
        for dataset in sorted(job.data):
            holders = ix.holders(dataset)
            if not holders:
                continue
            start = self.rng.randrange(len(holders))
            for step in range(min(len(holders), self.config.scan_limit)):
                i = holders[(start + step) % len(holders)]
                if busy_only and not ix.on_node[i]:
                    continue
                if i not in found and feasible(ix, job, i):
                    found.append(i)
                    if len(found) >= limit:
                        return found
        return found

    def _sample(self, job: JobReq, limit: int) -> list[int]:
        ix = self.ix
        if self._perm is None:
            self._perm = list(range(ix.n))
            self.rng.shuffle(self._perm)
        perm, n, found = self._perm, ix.n, []
        for step in range(n):
            i = perm[(self._offset + step) % n]
            if feasible(ix, job, i):
                found.append(i)
                if len(found) >= limit:
                    break
        self._offset = (self._offset + max(1, len(found))) % max(n, 1)
        return found

    def full_pass(self, job: JobReq) -> tuple[list[int], dict[str, int]]:
        """Every node through every filter: the feasible ones, else all reasons counted."""
        found, reasons = [], {}
        for i in range(self.ix.n):
            why = rejections(self.ix, job, i)
            if not why:
                found.append(i)
            for reason in why:
                reasons[reason] = reasons.get(reason, 0) + 1
        return found, reasons

    # -- preemption -----------------------------------------------------------------------
    def preempt(self, job: JobReq) -> Choice | None:
        """The cheapest eviction making room: lowest highest-evicted priority, then fewest
        evictions, then the lowest priority sum. Never evicts priority >= the job's."""
        ix, best, best_cost = self.ix, None, None
        for i in range(ix.n):
            if rejections(ix, job, i, resources=False):
                continue
            victims = self._victims(job, i)
            if victims is None:
                continue
            cost = (max(v.priority for v in victims), len(victims),
                    sum(v.priority for v in victims), i)
            if best_cost is None or cost < best_cost:
                best, best_cost = Choice(i, 0.0, tuple(victims)), cost
        return best

    def _victims(self, job: JobReq, i: int) -> list[Held] | None:
        ix = self.ix
        lower = sorted((h for h in ix.on_node[i].values() if h.priority < job.priority),
                       key=lambda h: (h.priority, -h.cpu * ix.total_mem - h.memory * ix.total_cpu,
                                      h.key))
        short = [job.cpu - ix.free_cpu[i], job.memory - ix.free_mem[i],
                 job.disk - ix.free_disk[i], job.gpus - ix.free_gpu[i]]
        chosen: list[Held] = []
        for h in lower:
            if max(short) <= 0:
                break
            chosen.append(h)
            _credit(short, h, -1)
        if max(short) > 0 or not chosen:
            return None
        for h in reversed(chosen[:-1]):  # drop victims the others make unnecessary
            _credit(short, h, +1)
            if max(short) > 0:
                _credit(short, h, -1)
            else:
                chosen.remove(h)
        return chosen


def _credit(short: list[int], h: Held, sign: int) -> None:
    short[0] += sign * h.cpu
    short[1] += sign * h.memory
    short[2] += sign * h.disk
    short[3] += sign * h.gpus
