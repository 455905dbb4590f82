"""Slot records: how the scheduler keeps one instance slot's actual state in Consul KV.

One key per slot (`walle/allocs/<job>/<slot>`) holds the core's Allocation of the instance that
is "the" instance of the slot, plus, during a graceful move or replace, the `previous`
instance that still runs until the new one passes its checks. The core only ever sees the
primary allocation, so a move never looks like two competing instances of one slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from walle.adapters.consul import Allocation as StoredAlloc
from walle.core import Allocation, Capacity, Grant
from walle.core.model import ALLOC_STATES

REASON_MAX = 2000  # a failure reason is a message, not a log: keep records small


@dataclass(frozen=True)
class SlotRecord:
    alloc: Allocation
    previous: Allocation | None = None  # still running elsewhere until `alloc` passes
    modify_index: int = 0  # 0: not stored yet (create with CAS 0)
    state_since: float = 0.0  # when `alloc.state` last changed (health timeouts)
    critical_since: float | None = None  # when a running instance's checks turned critical
    reason: str = ""  # why the slot failed (state `failed`), for the operator

    @property
    def key(self) -> str:
        return self.alloc.key

    def with_alloc(self, alloc: Allocation, now: float) -> SlotRecord:
        """The record with a new allocation; a change of state starts a new `state_since` and
        drops the old failure reason."""
        if alloc.state == self.alloc.state:
            return replace(self, alloc=alloc)
        return replace(self, alloc=alloc, state_since=now, reason="")

    def failed(self, reason: str, now: float) -> SlotRecord:
        """The slot's instance failed: state `failed`, and why."""
        return replace(self.with_alloc(replace(self.alloc, state="failed"), now),
                       reason=reason[:REASON_MAX])


def attempt_of(alloc: Allocation) -> str:
    """Which placement of its slot an allocation is: the core's creation time, unique per
    slot. A batch run records it with its commit (walle-batch-commit), so the leader can tell
    the commit of this placement from a late one of an earlier placement."""
    return f"{alloc.since:.6f}"


def to_stored(record: SlotRecord) -> StoredAlloc:
    a = record.alloc
    extra = {
        "runtime_digest": a.runtime_digest,
        "reserved": asdict(a.reserved),
        "ceiling": asdict(a.ceiling),
        "priority": a.priority,
        "failed_nodes": list(a.failed_nodes),
        "since": a.since,
        "ports": list(a.ports),
        "gpu_indices": list(a.gpu_indices),
        "state_since": record.state_since,
        "critical_since": record.critical_since,
        "reason": record.reason,
        "previous": alloc_to_dict(record.previous) if record.previous else None,
    }
    return StoredAlloc(job=a.job, slot=a.slot, node=a.node, state=a.state,
                       version=a.spec_digest, grant=asdict(a.grant) if a.grant else {},
                       modify_index=record.modify_index, extra=extra)


def from_stored(stored: StoredAlloc) -> SlotRecord:
    """The record as the scheduler uses it; ValueError/TypeError for a value it cannot use (the
    snapshot reports such a record as unreadable)."""
    if stored.state not in ALLOC_STATES:
        raise ValueError(f"state {stored.state!r} is not one of {', '.join(ALLOC_STATES)}")
    if not stored.node:
        raise ValueError("node is empty")
    body = {"node": stored.node, "state": stored.state, "version": stored.version,
            "grant": dict(stored.grant), **dict(stored.extra)}
    alloc = alloc_from_dict(stored.job, stored.slot, body)
    previous = body.get("previous")
    return SlotRecord(
        alloc=alloc,
        previous=alloc_from_dict(stored.job, stored.slot, previous) if previous else None,
        modify_index=stored.modify_index,
        state_since=float(body.get("state_since", 0.0)),
        critical_since=body.get("critical_since"),
        reason=str(body.get("reason") or ""),
    )


def alloc_to_dict(a: Allocation) -> dict[str, Any]:
    return {
        "node": a.node, "state": a.state, "version": a.spec_digest,
        "runtime_digest": a.runtime_digest, "reserved": asdict(a.reserved),
        "ceiling": asdict(a.ceiling), "priority": a.priority,
        "grant": asdict(a.grant) if a.grant else {}, "failed_nodes": list(a.failed_nodes),
        "since": a.since, "ports": list(a.ports), "gpu_indices": list(a.gpu_indices),
    }


def alloc_from_dict(job: str, slot: int, body: Mapping[str, Any]) -> Allocation:
    grant = body.get("grant") or None
    return Allocation(
        job=job, slot=slot, node=body["node"],
        reserved=Capacity(**body.get("reserved", {})),
        ceiling=Capacity(**body.get("ceiling", {})),
        spec_digest=body.get("version", ""),
        runtime_digest=body.get("runtime_digest", ""),
        priority=int(body.get("priority", 50)),
        state=body.get("state", "pending"),
        grant=Grant(**grant) if grant else None,
        failed_nodes=tuple(body.get("failed_nodes", ())),
        since=float(body.get("since", 0.0)),
        ports=tuple(int(p) for p in body.get("ports", ())),
        gpu_indices=tuple(int(i) for i in body.get("gpu_indices", ())),  # absent: before GPUs
    )
