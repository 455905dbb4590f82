"""The reconciler: desired jobs + actual allocations + nodes -> a Plan. Pure.

One round:
1. classify every (job, slot): keep, stop (job gone, scaled down, duplicate), migrate (node
   down, draining or unknown), update in place (only non-runtime fields changed and the new
   minimums fit where it is), replace (runtime changed; at most `update.max_parallel` per job
   in flight: new-version allocations still pending count against it), re-place (failed:
   penalty on the nodes it failed on; batch jobs stop after `retries` failures), place
   (missing slot);
2. place the work. First in packing order (`packing_order`): GPU work, then cpu-heavy and
   memory-heavy instances interleaved so the placed demand keeps the round's cpu/memory
   ratio, each stream largest first; one sorted pass gives every node a mix that fills
   both resources. Priorities only matter when something does not fit, so if any instance
   is refused in that order the round is planned again in priority order (higher first,
   larger first within a priority), where a refused instance may evict strictly
   lower-priority ones, re-placed in the same round if anything fits. Either way no
   instance fails because of packing order. A refused instance is offered the room again
   whenever a later move releases its old reservation, before lower priorities take it,
   so the next round has nothing left to move;
3. shed: a node under sustained pressure (core/shed.py, from the usage samples the caller
   passes as `pressure`) hands one movable service instance to a quieter node, within the
   cluster-wide bound on such moves;
4. recompute the elastic grants of every node whose load changed.
Deterministic for a given seed (the only randomness is a `random.Random(seed)`), and
idempotent: `reconcile(apply_plan(allocs, plan))` has no actions.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

from walle.core import ports as dynamic_ports
from walle.core.feasibility import JobReq, compile_job, rejections, summarise
from walle.core.gpus import assign
from walle.core.grants import grants_for
from walle.core.model import Allocation, AllocState, Capacity, Grant, Node
from walle.core.placement import Choice, PlacementConfig, Placer
from walle.core.plan import (
    Evict,
    Failure,
    Migrate,
    Place,
    Plan,
    Regrant,
    Replace,
    Stop,
    UpdateInPlace,
)
from walle.core.shed import Pressure, choose_moves
from walle.core.state import ClusterIndex, Held, held_from
from walle.jobspec.model import JobSpec
from walle.naming import instance_id

MAX_PLACEMENT_STEPS_PER_INSTANCE = 4  # bounds eviction chains: total steps <= 4 x instances


@dataclass
class _Work:
    """An instance to place this round."""

    job: str
    slot: int
    kind: str  # place | migrate | replace
    reason: str
    old: Allocation | None = None  # the allocation it moves from / replaces / succeeds
    failed_nodes: tuple[str, ...] = ()
    held_at: int | None = None  # node where `old` still holds its reservation until placed
    shed: bool = False  # a move off a node under pressure (core/shed.py)


def reconcile(jobs: Mapping[str, JobSpec], allocations: Iterable[Allocation],
              nodes: Iterable[Node] | Mapping[str, Node], *, seed: int, now: float,
              config: PlacementConfig | None = None, pressure: Pressure | None = None) -> Plan:
    """`pressure`: the nodes' usage samples, to shed work off nodes under sustained
    pressure (core/shed.py); None: no shedding."""
    config = config or PlacementConfig()
    node_list = list(nodes.values()) if isinstance(nodes, Mapping) else list(nodes)
    allocations = tuple(allocations)
    if config.packing_order:
        try:
            return _Round(jobs, node_list, config, seed, now, packing=True,
                          pressure=pressure).run(allocations)
        except _OrderMatters:
            pass  # something did not fit: priorities decide who gets the room
    return _Round(jobs, node_list, config, seed, now, pressure=pressure).run(allocations)


class _OrderMatters(Exception):
    """An instance was refused in packing order: plan the round in priority order."""


class _Round:
    def __init__(self, jobs: Mapping[str, JobSpec], nodes: list[Node],
                 config: PlacementConfig, seed: int, now: float, packing: bool = False,
                 pressure: Pressure | None = None) -> None:
        self.jobs, self.config, self.now, self.packing = jobs, config, now, packing
        self.pressure = pressure
        self.seed = seed
        self.ix = ClusterIndex(nodes)
        # in packing order nothing is evicted: a refusal hands the round to priority order
        placer_config = replace(config, preemption=False) if packing else config
        self.placer = Placer(self.ix, placer_config, random.Random(seed))
        self.reqs: dict[str, JobReq] = {}
        self.digests: dict[str, tuple[str, str]] = {}
        for name, spec in sorted(jobs.items()):
            if name != spec.name:
                raise ValueError(f"jobs[{name!r}]: key differs from spec.name {spec.name!r}")
            self.reqs[name] = compile_job(
                spec, default_strategy=config.default_strategy,
                full_scan=name in config.full_scan_jobs)
            self.digests[name] = _digests(spec)
        self.current: dict[str, Allocation] = {}  # key -> allocation holding resources
        self.work: list[_Work] = []
        self.stops: list[Stop] = []
        self.updates: dict[str, UpdateInPlace] = {}
        self.evictions: list[Evict] = []
        self.failures: dict[tuple[str, str], tuple[list[int], dict[str, int]]] = {}
        self.refused: dict[str, dict[str, int]] = {}  # job -> why placement found no node
        self.unplaced: dict[int, dict[str, int]] = {}  # work index -> why no node took it
        self.moving: set[str] = set()  # keys with a queued move/replace holding their room
        self.settled: set[tuple[str, int]] = set()  # batch slots done or out of retries
        self.placed: list[tuple[_Work, int, float]] = []
        self.touched: set[int] = set()

    def run(self, allocations: Iterable[Allocation]) -> Plan:
        pending_update, pending_replace = self._classify(allocations)
        self._decide_updates(pending_update)
        self._decide_replaces(pending_replace)
        self.ix.build_indexes()
        self._place_all()
        if self.pressure is not None:
            self._shed(self.pressure)
        return self._plan()

    # -- 1. classify ----------------------------------------------------------------------
    def _classify(self, allocations: Iterable[Allocation]):
        groups: dict[tuple[str, int], list[Allocation]] = {}
        for a in allocations:
            group = groups.get((a.job, a.slot))
            if group is None:
                groups[(a.job, a.slot)] = [a]
            else:
                group.append(a)
        to_update, to_replace = [], []
        for (job, slot), group in groups.items():  # order-free: all output is sorted later
            spec = self.jobs.get(job)
            if spec is None or slot >= spec.count:
                why = "job removed" if spec is None else f"scaled down to {spec.count}"
                self.stops.extend(Stop(a, why) for a in group if a.state != "stopped")
                continue
            keeper = self._keeper(group)
            if len(group) > 1:
                self.stops.extend(Stop(a, "duplicate or stale instance of the slot")
                                  for a in group if _superseded(a, keeper))
            if keeper is None:
                self._succeed(spec, slot, group)
                continue
            i = self.ix.pos.get(keeper.node)
            if i is None or not self.ix.ready[i]:
                state = "unknown" if i is None else self.ix.nodes[i].state
                self.work.append(_Work(job, slot, "migrate", f"node {keeper.node} {state}",
                                       keeper, keeper.failed_nodes))
                continue
            digest, runtime = self.digests[job]
            if keeper.spec_digest == digest:  # the common case: reserve what the spec says
                self._hold_current(i, keeper, self.reqs[job])
                continue
            self._hold(i, keeper, spec.priority)
            target = to_replace if keeper.runtime_digest != runtime else to_update
            target.append((i, keeper))
        key = lambda item: (item[1].job, item[1].slot)  # noqa: E731
        return sorted(to_update, key=key), sorted(to_replace, key=key)

    @staticmethod
    def _keeper(group: list[Allocation]) -> Allocation | None:
        live = [a for a in group if a.live]
        if not live:
            return None
        return min(live, key=lambda a: (a.state != "running", a.node))

    def _succeed(self, spec: JobSpec, slot: int, group: list[Allocation]) -> None:
        """No live instance in the slot: place one unless a batch slot is done or spent."""
        last = max(group, key=lambda a: (a.since, a.state == "failed", a.node))
        if last.state == "stopped":
            if spec.kind == "batch":
                self.settled.add((spec.name, slot))  # a stopped batch instance is done
                return
            self.work.append(_Work(spec.name, slot, "place", "stopped", last, last.failed_nodes))
            return
        history = last.failed_nodes + (last.node,)
        if spec.kind == "batch" and len(history) > spec.retries:
            self.settled.add((spec.name, slot))
            self._fail(spec.name, slot, {f"failed {len(history)} times, retries "
                                         f"{spec.retries}": 1})
            return
        self.work.append(_Work(spec.name, slot, "place", f"failed on {last.node}", last, history))

    def _hold_current(self, i: int, alloc: Allocation, req: JobReq) -> None:
        res = req.spec.resources
        have = dict(alloc.dynamic_ports)
        assigned = tuple(have[label] for label in req.dynamic) \
            if set(have) == set(req.dynamic) else ()
        self.ix.reserve(i, Held(alloc.key, alloc.job, alloc.slot, req.priority, req.cpu,
                                req.memory, req.disk, req.gpus, res.cpu.min, res.cpu.max,
                                int(res.memory.min), int(res.memory.max), req.ports,
                                req.dynamic, assigned))
        self.current[alloc.key] = alloc
        if alloc.grant is None:
            self.touched.add(i)

    def _hold(self, i: int, alloc: Allocation, priority: int) -> None:
        self.ix.reserve(i, held_from(alloc, priority))
        self.current[alloc.key] = alloc
        if alloc.grant is None:
            self.touched.add(i)

    def _decide_updates(self, items: list[tuple[int, Allocation]]) -> None:
        for i, old in items:
            req = self.reqs[old.job]
            self.ix.release(i, old.key)
            why = rejections(self.ix, req, i)
            if why:  # it keeps its place until the move is placed
                self.ix.reserve(i, held_from(old, req.priority))
                self._push_move(_Work(old.job, old.slot, "migrate",
                                      "new spec does not fit on node: " + ", ".join(why),
                                      old, old.failed_nodes, held_at=i))
                continue
            new = self._allocation(req, old.slot, old.node, old.failed_nodes)
            new = replace(new, dynamic_ports=old.dynamic_ports)  # same runtime: same labels
            self.ix.reserve(i, held_from(new))
            self.updates[old.key] = UpdateInPlace(old, new)
            self.touched.add(i)

    def _decide_replaces(self, items: list[tuple[int, Allocation]]) -> None:
        """Rolling update: a job has at most max_parallel slots down at a time, counting new
        versions still pending and slots with no instance holding a node (missing, failed,
        moving off a lost node); the rest wait for a later round."""
        if not items:
            return
        in_flight: dict[str, int] = {}
        held = {(a.job, a.slot) for a in self.current.values()}
        for job in {old.job for _, old in items}:
            in_flight[job] = sum(1 for slot in range(self.jobs[job].count)
                                 if (job, slot) not in held and (job, slot) not in self.settled)
        for a in self.current.values():
            if a.job in in_flight and a.state == "pending" and \
                    a.spec_digest == self.digests[a.job][0]:
                in_flight[a.job] += 1
        for i, old in sorted(items, key=lambda item: (item[1].job, item[1].slot)):
            spec = self.jobs[old.job]
            if in_flight.get(old.job, 0) >= max(1, spec.update.max_parallel):
                continue  # waits for the in-flight batch to become healthy
            in_flight[old.job] = in_flight.get(old.job, 0) + 1
            self._push_move(_Work(old.job, old.slot, "replace", "runtime changed", old,
                                  old.failed_nodes, held_at=i))

    def _push_move(self, w: _Work) -> None:
        self.work.append(w)
        self.moving.add(w.old.key)

    # -- 2. place -------------------------------------------------------------------------
    def _place_all(self) -> None:
        present = {(a.job, a.slot) for a in self.current.values()}
        present |= {(w.job, w.slot) for w in self.work}
        for name, spec in sorted(self.jobs.items()):
            self.work.extend(_Work(name, slot, "place", "new") for slot in range(spec.count)
                             if (name, slot) not in present and (name, slot) not in self.settled)
        if self.packing:
            heap = [(k, n) for k, n in enumerate(self._packing_sequence())]
        else:
            heap = [self._order(w, n) for n, w in enumerate(self.work)]
        heapq.heapify(heap)
        queued: set[int] = set()  # unplaced work pushed back onto the heap
        steps, budget = 0, MAX_PLACEMENT_STEPS_PER_INSTANCE * (len(heap) + 1)
        while heap and steps < budget:
            steps += 1
            *_, n = heapq.heappop(heap)
            queued.discard(n)
            outcome = self._place(self.work[n])
            if isinstance(outcome, dict):  # no node took it: why
                self.unplaced[n] = outcome
                continue
            self.unplaced.pop(n, None)
            evicted, freed = outcome
            for e in evicted:
                self.work.append(e)
                heapq.heappush(heap, self._order(e, len(self.work) - 1))
            if freed and self.unplaced:
                # a move left its old room behind: what found no node before may fit now
                # (or evict into it), and must get it before lower priorities do, or the
                # next round would undo this one's placements. Each move frees room once,
                # so the retries are bounded; they get steps of their own.
                self.refused.clear()
                retry = [m for m in sorted(self.unplaced) if m not in queued]
                queued.update(retry)
                budget += len(retry)
                for m in retry:
                    heapq.heappush(heap, self._order(self.work[m], m))
        for n, reasons in sorted(self.unplaced.items()):
            self._fail(self.work[n].job, self.work[n].slot, reasons)

    def _packing_sequence(self) -> list[int]:
        """Work indexes in packing order: GPU work first (few nodes can take it), then two
        streams, instances heavier in memory than the round's demand ratio and the rest,
        each largest first, merged so that the demand placed so far keeps the round's
        cpu/memory ratio: best fit then lays cpu-heavy and memory-heavy work side by side
        instead of filling nodes' cpu first and stranding their memory (or the reverse)."""
        reqs = [self.reqs[w.job] for w in self.work]
        total_cpu = sum(r.cpu for r in reqs) or 1
        total_mem = sum(r.memory for r in reqs) or 1

        def key(n: int) -> tuple:
            r, w = reqs[n], self.work[n]
            return (-r.gpus, -(r.cpu / total_cpu + r.memory / total_mem), w.job, w.slot)

        ordered = sorted(range(len(self.work)), key=key)
        gpu = [n for n in ordered if reqs[n].gpus]
        heavy = [n for n in ordered if not reqs[n].gpus
                 and reqs[n].memory * total_cpu > reqs[n].cpu * total_mem]
        light = [n for n in ordered if not reqs[n].gpus
                 and reqs[n].memory * total_cpu <= reqs[n].cpu * total_mem]
        out, cpu, mem, h, k = gpu, 0, 0, 0, 0
        while h < len(heavy) or k < len(light):
            if k >= len(light) or (h < len(heavy) and mem * total_cpu < cpu * total_mem):
                n, h = heavy[h], h + 1  # memory lags behind the round's ratio
            else:
                n, k = light[k], k + 1
            cpu, mem = cpu + reqs[n].cpu, mem + reqs[n].memory
            out.append(n)
        return out

    def _order(self, w: _Work, n: int) -> tuple:
        req = self.reqs[w.job]
        size = req.cpu / max(self.ix.total_cpu, 1) + req.memory / max(self.ix.total_mem, 1)
        return (-req.priority, -size, w.job, w.slot, n)

    def _place(self, w: _Work) -> tuple[list[_Work], bool] | dict[str, int]:
        """Reserve a node for `w`: (evicted instances to re-place, whether a move released
        its old room), or why no node took it."""
        req = self.reqs[w.job]
        if w.job in self.refused and w.held_at is None:
            # until a move frees room the state only fills up: later slots of a refused job
            # fail the same way
            return self.refused[w.job]
        released = self._release_old(w)  # a move or replace may reuse its own room
        avoid = frozenset(self.ix.pos[n] for n in w.failed_nodes if n in self.ix.pos)
        choice = self.placer.place(req, avoid)
        if not isinstance(choice, Choice):
            if self.packing:
                raise _OrderMatters
            self.refused[w.job] = choice.reasons
            if released is not None:  # nothing changed since the release: put it back
                self._hold(w.held_at, w.old, released.priority)
            return choice.reasons
        evicted = [self._evict(choice.node, h, instance_id(w.job, w.slot))
                   for h in choice.evict]
        self.ix.reserve(choice.node, _new_held(req, w.slot))
        self.touched.add(choice.node)
        self.placed.append((w, choice.node, choice.score))
        return [e for e in evicted if e is not None], released is not None

    def _release_old(self, w: _Work) -> Held | None:
        if w.held_at is None or w.old.key not in self.ix.on_node[w.held_at]:
            return None  # nothing held, or evicted meanwhile
        self.current.pop(w.old.key, None)
        self.touched.add(w.held_at)
        return self.ix.release(w.held_at, w.old.key)

    def _evict(self, i: int, held: Held, by: str) -> _Work | None:
        self.ix.release(i, held.key)
        self.touched.add(i)
        update = self.updates.pop(held.key, None)
        victim = self.current.pop(held.key)
        victim = update.old if update else victim
        self.evictions.append(Evict(victim, by))
        if held.job not in self.jobs or held.key in self.moving:
            return None  # a move already queued for this slot places it
        return _Work(held.job, held.slot, "place", f"evicted by {by}", None,
                     victim.failed_nodes)

    def _fail(self, job: str, slot: int, reasons: dict[str, int]) -> None:
        message = summarise(reasons)
        slots, _ = self.failures.setdefault((job, message), ([], dict(reasons)))
        slots.append(slot)

    # -- 3. shed ----------------------------------------------------------------------------
    def _shed(self, pressure: Pressure) -> None:
        """Moves off nodes under sustained pressure, after everything else is placed: only
        running service instances that stay where they are this round, onto nodes that take
        them with what is left."""
        staying = [a for a in self.current.values()
                   if a.state == "running" and a.key not in self.moving
                   and a.key not in self.updates]

        def movable(a: Allocation) -> bool:
            spec = self.jobs.get(a.job)
            return spec is not None and spec.kind == "service" and spec.movable

        def feasible(a: Allocation, node: str) -> bool:
            j = self.ix.pos.get(node)
            return j is not None and not rejections(self.ix, self.reqs[a.job], j)

        nodes = {n.name: n for n in self.ix.nodes}
        for move in choose_moves(pressure, nodes, staying, movable, feasible, self.now):
            a, req = move.alloc, self.reqs[move.alloc.job]
            i, j = self.ix.pos[a.node], self.ix.pos[move.target]
            self.ix.release(i, a.key)
            self.current.pop(a.key)
            self.ix.reserve(j, _new_held(req, a.slot))
            self.touched |= {i, j}
            self.placed.append((_Work(a.job, a.slot, "migrate", move.reason, a,
                                      a.failed_nodes, held_at=i, shed=True), j, move.score))

    # -- 4. grants and the plan -----------------------------------------------------------
    def _allocation(self, req: JobReq, slot: int, node: str,
                    failed_nodes: tuple[str, ...], grant: Grant | None = None) -> Allocation:
        return allocation_for(req, slot, node, self.digests[req.name], since=self.now,
                              grant=grant, failed_nodes=failed_nodes)

    def _grants(self) -> dict[str, Grant]:
        grants: dict[str, Grant] = {}
        for i in sorted(self.touched):
            if not self.ix.ready[i]:
                continue
            cap = self.ix.nodes[i].capacity
            demands = [(h.key, h.cpu_min, h.cpu_max, h.mem_min, h.mem_max)
                       for h in self.ix.on_node[i].values()]
            grants.update(grants_for(cap.cpu, cap.memory, demands))
        return grants

    def _gpu_indices(self) -> dict[str, tuple[int, ...]]:
        """The GPUs of every instance that holds some when the round is done (core/gpus.py):
        kept where it stays, the lowest free ones for new holders."""
        leaving: dict[str, list[int]] = {}
        for old in self._leaving():
            leaving.setdefault(old.node, []).extend(old.gpu_indices)
        out: dict[str, tuple[int, ...]] = {}
        for i, node in enumerate(self.ix.nodes):
            holders = {key: h.gpus for key, h in self.ix.on_node[i].items() if h.gpus}
            if not holders or not self.ix.ready[i]:
                continue
            kept = {key: a.gpu_indices for key in holders
                    if (a := self.current.get(key)) is not None and a.node == node.name}
            out.update(assign(node.capacity.gpus, holders, kept, leaving.get(node.name, ())))
        return out

    def _leaving(self) -> list[Allocation]:
        """Instances leaving their node this round (still running until their successor
        passes its checks, or until stopped)."""
        return [w.old for w, _, _ in self.placed if w.old is not None] + \
            [s.alloc for s in self.stops] + [e.alloc for e in self.evictions]

    def _dynamic_ports(self) -> dict[str, dynamic_ports.Assigned]:
        """The dynamic ports of every holder when the round is done (core/ports.py): kept
        where it stays, new ones where the seed says, never a port another holder has."""
        leaving: dict[str, list[int]] = {}
        for old in self._leaving():
            leaving.setdefault(old.node, []).extend(p for _, p in old.dynamic_ports)
        out: dict[str, dynamic_ports.Assigned] = {}
        for i, node in enumerate(self.ix.nodes):
            on = self.ix.on_node[i]
            holders = {key: h.dynamic for key, h in on.items() if h.dynamic}
            if not holders or not self.ix.ready[i]:
                continue
            kept = {key: a.dynamic_ports for key in holders
                    if (a := self.current.get(key)) is not None and a.node == node.name}
            fixed = {p for h in on.values() for p in h.ports}
            out.update(dynamic_ports.assign(node.port_range, holders, kept, fixed,
                                            leaving.get(node.name, ()), self.seed))
        return out

    def _plan(self) -> Plan:
        grants = self._grants()
        gpus = self._gpu_indices()
        ports = self._dynamic_ports()
        places, migrates, replaces = [], [], []
        for w, i, score in self.placed:
            key = instance_id(w.job, w.slot)
            new = self._allocation(self.reqs[w.job], w.slot, self.ix.nodes[i].name,
                                   w.failed_nodes, grants.get(key))
            new = replace(new, gpu_indices=gpus.get(key, ()), dynamic_ports=ports.get(key, ()))
            if w.kind == "migrate":
                migrates.append(Migrate(w.old, new, w.reason, round(score, 2), w.shed))
            elif w.kind == "replace":
                replaces.append(Replace(w.old, new, round(score, 2)))
            else:
                places.append(Place(new, w.reason, round(score, 2), w.old))
        updates = [replace(u, new=replace(u.new, grant=grants.get(key, u.new.grant),
                                          gpu_indices=gpus.get(key, ()),
                                          dynamic_ports=ports.get(key, ())))
                   for key, u in sorted(self.updates.items())]
        regrants = []  # a new grant, or GPUs for an instance placed before it had indices
        for key, a in self.current.items():  # copied only when something moved: 100,000 a step
            grant = grants.get(key, a.grant)
            gpu = gpus.get(key, a.gpu_indices)
            port = ports.get(key, a.dynamic_ports)
            if grant is None or key in self.updates or (
                    grant == a.grant and gpu == a.gpu_indices and port == a.dynamic_ports):
                continue
            regrants.append(Regrant(a, replace(a, grant=grant, gpu_indices=gpu,
                                               dynamic_ports=port)))
        regrants.sort(key=lambda r: r.old.key)
        failures = [Failure(job, tuple(sorted(slots)),
                            tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))), msg)
                    for (job, msg), (slots, counts) in sorted(self.failures.items())]
        stops = sorted(self.stops, key=lambda s: (s.alloc.job, s.alloc.slot, s.alloc.node))
        return Plan(places=tuple(places), stops=tuple(stops), migrates=tuple(migrates),
                    updates=tuple(updates), replaces=tuple(replaces),
                    evictions=tuple(self.evictions), regrants=tuple(regrants),
                    failures=tuple(failures))


def allocation_for(req: JobReq, slot: int, node: str, digests: tuple[str, str], *,
                   since: float, state: AllocState = "pending", grant: Grant | None = None,
                   failed_nodes: tuple[str, ...] = ()) -> Allocation:
    """The allocation of one slot of `req` on `node`, holding what the spec reserves.
    `digests` is (spec digest, runtime digest) of the version the instance runs: the service
    layer passes an older version's when it adopts an instance found running (disaster
    recovery), so the usual update path replaces it."""
    res = req.spec.resources
    digest, runtime = digests
    return Allocation(
        job=req.name, slot=slot, node=node,
        reserved=Capacity(res.cpu.min, int(res.memory.min), int(res.disk), int(res.gpus)),
        ceiling=Capacity(res.cpu.max, int(res.memory.max), int(res.disk), int(res.gpus)),
        spec_digest=digest, runtime_digest=runtime, priority=req.priority,
        state=state, grant=grant, failed_nodes=failed_nodes, since=since, ports=req.ports)


def _new_held(req: JobReq, slot: int) -> Held:
    """What a new instance of `req` in `slot` holds on the node it is placed on."""
    res = req.spec.resources
    return Held(instance_id(req.name, slot), req.name, slot, req.priority, req.cpu, req.memory,
                req.disk, req.gpus, res.cpu.min, res.cpu.max, int(res.memory.min),
                int(res.memory.max), req.ports, req.dynamic)


@lru_cache(maxsize=1 << 16)
def _digests(spec: JobSpec) -> tuple[str, str]:
    """(digest, runtime digest): hashing a spec is cheap, digesting it is not."""
    return spec.digest(), spec.runtime_digest()


def _superseded(a: Allocation, keeper: Allocation | None) -> bool:
    """Another live instance of the slot, or a failed one once a live one exists."""
    if a is keeper or a.state == "stopped":
        return False
    return a.live or keeper is not None
