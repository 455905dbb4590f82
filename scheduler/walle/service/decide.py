"""The scheduler's decision, as a pure function: snapshot + records + defaults + now -> Plan.

The leader calls `decide` at every step (service/scheduler.py) and `walle plan` calls it on the
live snapshot as a dry run (service/dryrun.py): one code path, so the plan explains the decision
the leader makes (docs/architecture.md, "One decision path"). The cluster's defaults (strategy,
seed, leave grace) are flags of `walle scheduler run`; the leader publishes them in Consul KV
when it takes office (`Defaults`, walle/config/placement) so the CLI decides with the same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, replace
from typing import Any

from walle.adapters.consul import BatchCommit
from walle.core import Allocation, PlacementConfig, Plan, reconcile
from walle.core.plan import Failure
from walle.core.shed import Pressure
from walle.jobspec import JobSpec
from walle.naming import instance_id
from walle.service.cluster import Snapshot
from walle.service.presence import DEFAULT_DOWN_GRACE, DEFAULT_LEAVE_GRACE
from walle.service.records import SlotRecord, attempt_of

RETRY_BASE = 5.0  # a slot that failed twice in a row waits this long before its next try...
RETRY_CAP = 120.0  # ...doubling with each failure, up to this
STRATEGIES = ("spread", "binpack")


@dataclass(frozen=True)
class Defaults:
    """The cluster-wide inputs of the decision that are not in Consul's state: the leader's
    `walle scheduler run --strategy/--seed/--node-leave-grace/--node-down-grace`."""

    strategy: str = "spread"
    seed: int = 0
    node_leave_grace: float = DEFAULT_LEAVE_GRACE
    node_down_grace: float = DEFAULT_DOWN_GRACE

    def placement(self) -> PlacementConfig:
        return PlacementConfig(default_strategy=self.strategy)

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "seed": self.seed,
                "node_leave_grace": self.node_leave_grace,
                "node_down_grace": self.node_down_grace}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Defaults:
        """ValueError names the field that is wrong."""
        strategy, seed = body.get("strategy"), body.get("seed")
        grace = body.get("node_leave_grace")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed {seed!r}: an integer")
        down = body.get("node_down_grace", DEFAULT_DOWN_GRACE)  # absent: published before it
        for name, value in (("node_leave_grace", grace), ("node_down_grace", down)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} {value!r}: 0 or more seconds")
        return cls(strategy, seed, float(grace), float(down))


def take_commits(snap: Snapshot, records: Mapping[str, SlotRecord], now: float
                 ) -> tuple[dict[str, SlotRecord], list[BatchCommit]]:
    """Batch runs their node recorded as finished (walle/done/, written by the unit's
    walle-batch-commit once the job exited 0): (records that become `stopped`, i.e. done,
    whatever else is known of them; every commit read, to delete). A commit of an earlier
    placement of the slot (another node or attempt), or of a slot that is gone, changes
    nothing. Slots whose record cannot be read are left alone. The leader applies this
    before it decides anything, and `walle plan` does the same."""
    done: dict[str, SlotRecord] = {}
    consumed = []
    for key, commit in sorted(snap.commits.items()):
        if key in snap.blocked_slots or commit.job in snap.frozen_jobs:
            continue
        r = records.get(key)
        if (r is not None and r.alloc.state in ("pending", "running", "failed")
                and r.alloc.node == commit.node and attempt_of(r.alloc) == commit.attempt):
            done[key] = r.with_alloc(replace(r.alloc, state="stopped"), now)
        consumed.append(commit)
    return done, consumed


def decide(snap: Snapshot, records: Mapping[str, SlotRecord], now: float, *, seed: int,
           placement: PlacementConfig,
           on_unplannable: Callable[[str, Exception], None] | None = None,
           in_flight: Set[str] = frozenset(), pressure: Pressure | None = None) -> Plan:
    """The core's plan, less what must wait: slots whose record cannot be read, jobs whose
    record cannot be read or that the core cannot plan (their instances are left as they
    are), failed slots still backing off, and slots a batch of the leader acts on now
    (`in_flight`: service/dispatch.py; the leader publishes them for `walle plan`, dryrun.py).
    `snap.away` must be set (NodePresence). `pressure`: the nodes' usage samples, to shed work
    off nodes under sustained pressure (core/shed.py; the leader's, published for `walle plan`)."""
    allocs = [r.alloc for r in records.values()]
    jobs = dict(snap.jobs)
    try:
        plan = reconcile(jobs, allocs, snap.nodes, seed=seed, now=now, config=placement,
                         pressure=pressure)
        unplannable: set[str] = set()
    except Exception:  # noqa: BLE001 - find the job(s) that make the core fail, plan the rest
        unplannable = _unplannable(jobs, allocs, snap, now, seed, placement, on_unplannable)
        for name in unplannable:
            jobs.pop(name)
        plan = reconcile(jobs, allocs, snap.nodes, seed=seed, now=now, config=placement,
                         pressure=pressure)
    left_alone = snap.frozen_jobs | unplannable
    hands_off = {r.key for r in records.values()
                 if r.alloc.job in left_alone} | snap.blocked_slots | set(in_flight)
    # an away node's slots wait for it: a failed placement there too (the playbook may have
    # started the unit before the node was cut off, and the node still runs it)
    hands_off |= {r.key for r in records.values() if r.alloc.node in snap.away
                  and (r.alloc.live or r.alloc.state == "failed")}
    waiting = {r.key for r in records.values() if retry_at(r) > now} | snap.blocked_slots
    return hold_back(plan, hands_off, waiting)


def _unplannable(jobs: dict[str, JobSpec], allocs: list[Allocation], snap: Snapshot,
                 now: float, seed: int, placement: PlacementConfig,
                 on_unplannable: Callable[[str, Exception], None] | None) -> set[str]:
    """Jobs the core raises on when planned alone. (If none does, the failure needs
    several jobs together: the second reconcile raises again and the loop's back-off
    takes over.)"""
    bad = set()
    for name, spec in jobs.items():
        try:
            reconcile({name: spec}, [a for a in allocs if a.job == name], snap.nodes,
                      seed=seed, now=now, config=placement)
        except Exception as err:  # noqa: BLE001 - this job is the one: set it aside
            if on_unplannable is not None:
                on_unplannable(name, err)
            bad.add(name)
    return bad


def retry_at(record: SlotRecord) -> float:
    """When a failed slot may be placed again: at once after its first failure (an instance
    that died is moved right away), then after RETRY_BASE seconds, doubling per failure up to
    RETRY_CAP, so a slot that fails everywhere is not retried at every step."""
    if record.alloc.state != "failed":
        return float("-inf")
    failures = len(record.alloc.failed_nodes) + 1
    if failures < 2:
        return record.state_since
    return record.state_since + min(RETRY_CAP, RETRY_BASE * 2 ** (failures - 2))


def hold_back(plan: Plan, hands_off: set[str], waiting: set[str]) -> Plan:
    """`plan` without actions on instances that must be left as they are (`hands_off`: no
    stop, move, update or eviction) and without new instances that must wait (`waiting`),
    nor anything that depended on a dropped action: an eviction made for a dropped placement,
    a placement that needed a dropped eviction, the re-placement of a victim that stays."""
    if not hands_off and not waiting:
        return plan
    dropped = hands_off | waiting  # slots that get no new instance this step
    kept_victims = {e.alloc.key for e in plan.evictions if e.alloc.key in hands_off
                    or e.by in dropped}
    dropped |= kept_victims | {e.by for e in plan.evictions if e.alloc.key in kept_victims}
    return replace(
        plan,
        places=tuple(p for p in plan.places if p.alloc.key not in dropped),
        stops=tuple(st for st in plan.stops if st.alloc.key not in hands_off),
        migrates=tuple(m for m in plan.migrates if m.new.key not in dropped),
        updates=tuple(u for u in plan.updates if u.new.key not in dropped),
        replaces=tuple(r for r in plan.replaces if r.new.key not in dropped),
        evictions=tuple(e for e in plan.evictions if e.alloc.key not in kept_victims),
        regrants=tuple(g for g in plan.regrants if g.new.key not in dropped),
        # a slot left as it is is not being placed: no refusal to report for it
        failures=tuple(f for f in (_without_slots(f, hands_off) for f in plan.failures) if f),
    )


def _without_slots(failure: Failure, keys: set[str]) -> Failure | None:
    """`failure` less the slots in `keys` (None when none is left)."""
    slots = tuple(s for s in failure.slots if instance_id(failure.job, s) not in keys)
    if len(slots) == len(failure.slots):
        return failure
    return replace(failure, slots=slots) if slots else None
