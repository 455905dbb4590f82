"""The plan: what the reconciler wants done, and `apply_plan` to predict the state after it.

Actions carry whole allocations (old and new) so the executor needs nothing else. Failures
are reports, not actions: a plan with only failures is empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from walle.core.model import Allocation


@dataclass(frozen=True)
class Place:
    alloc: Allocation
    reason: str  # "new", "evicted by web-0", "failed on node3", ...
    score: float = 0.0
    previous: Allocation | None = None  # the failed/stopped allocation this one succeeds


@dataclass(frozen=True)
class Stop:
    alloc: Allocation
    reason: str


@dataclass(frozen=True)
class Migrate:
    """Move off a down or draining node, one the instance no longer fits on, or one under
    sustained pressure (`shed`)."""

    old: Allocation
    new: Allocation
    reason: str
    score: float = 0.0
    shed: bool = False  # off a node under sustained pressure (core/shed.py)


@dataclass(frozen=True)
class UpdateInPlace:
    """Resource (or other non-runtime) change applied live on the same node."""

    old: Allocation
    new: Allocation


@dataclass(frozen=True)
class Replace:
    """Runtime change: stop the old instance, start the new version (maybe elsewhere)."""

    old: Allocation
    new: Allocation
    score: float = 0.0


@dataclass(frozen=True)
class Evict:
    alloc: Allocation
    by: str  # the instance key that needed the room


@dataclass(frozen=True)
class Regrant:
    """Load on the node changed: new CPUQuota/MemoryHigh for a running instance."""

    old: Allocation
    new: Allocation


@dataclass(frozen=True)
class Failure:
    job: str
    slots: tuple[int, ...]
    reasons: tuple[tuple[str, int], ...]  # (reason, nodes rejected for it), most first
    message: str


@dataclass(frozen=True)
class Plan:
    places: tuple[Place, ...] = ()
    stops: tuple[Stop, ...] = ()
    migrates: tuple[Migrate, ...] = ()
    updates: tuple[UpdateInPlace, ...] = ()
    replaces: tuple[Replace, ...] = ()
    evictions: tuple[Evict, ...] = ()
    regrants: tuple[Regrant, ...] = ()
    failures: tuple[Failure, ...] = ()

    @property
    def is_empty(self) -> bool:
        """No action to take (failures alone do not count)."""
        return not any(getattr(self, f.name) for f in fields(self) if f.name != "failures")

    def counts(self) -> dict[str, int]:
        return {f.name: len(getattr(self, f.name)) for f in fields(self)}


def apply_plan(allocations: Iterable[Allocation] | Mapping[str, Allocation],
               plan: Plan) -> tuple[Allocation, ...]:
    """The allocations after every action of `plan` took effect (pure). New allocations are
    pending: the executor marks them running once healthy."""
    current = allocations.values() if isinstance(allocations, Mapping) else allocations
    gone = {(a.key, a.node) for a in _removed(plan)}
    kept = [a for a in current if (a.key, a.node) not in gone]
    added = [p.alloc for p in plan.places]
    added += [x.new for x in (*plan.migrates, *plan.updates, *plan.replaces, *plan.regrants)]
    return tuple(sorted(kept + added, key=lambda a: (a.job, a.slot, a.node)))


def _removed(plan: Plan) -> list[Allocation]:
    out = [s.alloc for s in plan.stops] + [e.alloc for e in plan.evictions]
    out += [p.previous for p in plan.places if p.previous is not None]
    out += [x.old for x in (*plan.migrates, *plan.updates, *plan.replaces, *plan.regrants)]
    return out
