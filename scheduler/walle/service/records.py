"""Slot records: how the scheduler keeps one instance slot's actual state in Consul KV.

One key per slot (`walle/allocs/<job>/<slot>`) holds the core's Allocation of the instance that
is "the" instance of the slot, plus, during a graceful move or replace, the `previous`
instance that still runs until the new one passes its checks. The core only ever sees the
primary allocation, so a move never looks like two competing instances of one slot.

The operator sees the slot's `state` (SLOT_STATES: the core's allocation state, or a word that
says more: `lost` when its node is down, `complete` for a batch run that succeeded) and a
`reason` for every state but running; `refused` is why the leader cannot place the slot now
(the core's plan failure), kept apart so it can change without losing the reason.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from walle.adapters.consul import Allocation as StoredAlloc
from walle.core import Allocation, Capacity, Grant
from walle.core.model import ALLOC_STATES
from walle.core.plan import Failure, Plan
from walle.jobspec import JobSpec
from walle.naming import instance_id, parse_instance_id

REASON_MAX = 2000  # a failure reason is a message, not a log: keep records small
# What `walle status` shows: the core's states plus lost (its node is down, the slot waits for
# a new place), evicted (a higher priority took its room) and complete (a batch run succeeded).
SLOT_STATES: tuple[str, ...] = ("pending", "running", "lost", "evicted", "failed", "complete",
                                "stopped")


@dataclass(frozen=True)
class SlotRecord:
    alloc: Allocation
    previous: Allocation | None = None  # still running elsewhere until `alloc` passes
    modify_index: int = 0  # 0: not stored yet (create with CAS 0)
    state_since: float = 0.0  # when `alloc.state` last changed (health timeouts)
    critical_since: float | None = None  # when a running instance's checks turned critical
    reason: str = ""  # why the slot is in its state (all but running), for the operator
    status: str = ""  # the operator's word when it says more than alloc.state (SLOT_STATES)
    refused: str = ""  # why the leader cannot place the slot now; "" when nothing is refused

    @property
    def key(self) -> str:
        return self.alloc.key

    @property
    def state(self) -> str:
        """The slot's state as the operator sees it (one of SLOT_STATES)."""
        return self.status or self.alloc.state

    @property
    def why(self) -> str:
        """Everything the leader knows about why the slot is not simply running."""
        return "; ".join(part for part in (self.reason, self.refused) if part)

    def with_alloc(self, alloc: Allocation, now: float, reason: str = "") -> SlotRecord:
        """The record with a new allocation; a change of state starts a new `state_since` and
        replaces the old state's word and reason."""
        if alloc.state == self.alloc.state:
            return replace(self, alloc=alloc)
        return replace(self, alloc=alloc, state_since=now, status="",
                       reason=reason[:REASON_MAX])

    def failed(self, reason: str, now: float) -> SlotRecord:
        """The slot's instance failed: state `failed`, and why."""
        return replace(self.with_alloc(replace(self.alloc, state="failed"), now),
                       status="", reason=reason[:REASON_MAX])

    def marked(self, status: str, reason: str) -> SlotRecord:
        """The same allocation shown as `status` (SLOT_STATES), with why."""
        if status not in SLOT_STATES:
            raise ValueError(f"slot state {status!r} is not one of {', '.join(SLOT_STATES)}")
        return replace(self, status="" if status == self.alloc.state else status,
                       reason=reason[:REASON_MAX])


def attempt_of(alloc: Allocation) -> str:
    """Which placement of its slot an allocation is: the core's creation time, unique per
    slot. A batch run records it with its commit (walle-batch-commit), so the leader can tell
    the commit of this placement from a late one of an earlier placement."""
    return f"{alloc.since:.6f}"


def to_stored(record: SlotRecord) -> StoredAlloc:
    """The record as one JSON body (the allocation, then what the record adds)."""
    body = {
        **alloc_to_dict(record.alloc),
        "state_since": record.state_since,
        "critical_since": record.critical_since,
        "reason": record.reason,
        "status": record.status,
        "refused": record.refused,
        "previous": alloc_to_dict(record.previous) if record.previous else None,
    }
    return StoredAlloc.from_json(record.alloc.job, record.alloc.slot, body,
                                 record.modify_index)


def from_stored(stored: StoredAlloc) -> SlotRecord:
    """The record as the scheduler uses it; ValueError/TypeError for a value it cannot use (the
    snapshot reports such a record as unreadable)."""
    if stored.state not in ALLOC_STATES:
        raise ValueError(f"state {stored.state!r} is not one of {', '.join(ALLOC_STATES)}")
    if not stored.node:
        raise ValueError("node is empty")
    body = stored.to_json()
    alloc = alloc_from_dict(stored.job, stored.slot, body)
    previous = body.get("previous")
    # absent in records older than the word; a word this version does not know only changes
    # what is shown (the core's state), never whether the slot is scheduled
    status = str(body.get("status") or "")
    status = status if status in SLOT_STATES else ""
    return SlotRecord(
        alloc=alloc,
        previous=alloc_from_dict(stored.job, stored.slot, previous) if previous else None,
        modify_index=stored.modify_index,
        state_since=float(body.get("state_since", 0.0)),
        critical_since=body.get("critical_since"),
        reason=str(body.get("reason") or ""),
        status=status,
        refused=str(body.get("refused") or ""),
    )


def _flat(value: Capacity | Grant) -> dict[str, Any]:
    """A flat dataclass of numbers as a dict: what dataclasses.asdict gives, without its
    recursive deep copy (the leader writes every record through this: 100,000 at scale)."""
    names = _FIELD_NAMES.get(type(value))
    if names is None:
        names = _FIELD_NAMES[type(value)] = tuple(f.name for f in fields(value))
    return {name: getattr(value, name) for name in names}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def alloc_to_dict(a: Allocation) -> dict[str, Any]:
    return {
        "node": a.node, "state": a.state, "version": a.spec_digest,
        "runtime_digest": a.runtime_digest, "reserved": _flat(a.reserved),
        "ceiling": _flat(a.ceiling), "priority": a.priority,
        "grant": _flat(a.grant) if a.grant else {}, "failed_nodes": list(a.failed_nodes),
        "since": a.since, "ports": list(a.ports), "gpu_indices": list(a.gpu_indices),
        "dynamic_ports": dict(a.dynamic_ports),
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
        dynamic_ports=tuple(sorted((str(label), int(port)) for label, port
                                   in (body.get("dynamic_ports") or {}).items())),
    )


def clock_time(t: float) -> str:
    """A moment as an operator reads it in a reason: 12:03:04 UTC."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(t))


def lost_reason(node: str, node_state: str, since: float) -> str:
    return f"node {node} {node_state} since {clock_time(since)}"


def refusal(failure: Failure) -> str:
    """Why the core could not place a slot, from its plan failure."""
    if len(failure.reasons) == 1 and failure.reasons[0][0].startswith("failed "):
        return f"out of retries ({failure.reasons[0][0]})"  # a batch slot that failed enough
    return f"no feasible node ({failure.message})"


def with_node(record: SlotRecord, node_state: str | None, down_since: float) -> SlotRecord:
    """The record shown `lost` while its node is down or gone (`node_state` "down" or None)
    and it has not been placed elsewhere yet; back to its own state when the node returns."""
    lost = node_state in (None, "down") and record.alloc.state != "stopped"
    if lost and record.status != "lost":
        return record.marked("lost", lost_reason(record.alloc.node, node_state or "gone",
                                                 down_since))
    if not lost and record.status == "lost":
        return record.marked(record.alloc.state, "")
    return record


def refusals(plan: Plan) -> dict[str, str]:
    """Instance key -> why the core could not place it, for every slot of the plan's
    failures."""
    return {instance_id(f.job, slot): refusal(f) for f in plan.failures for slot in f.slots}


def evicted_by(by: str, jobs: Mapping[str, JobSpec]) -> str:
    """"evicted by batch-7-0 (priority 90)": who took the room, with the priority that let it."""
    parsed = parse_instance_id(by)
    spec = jobs.get(parsed[0]) if parsed else None
    return f"evicted by {by}" + (f" (priority {spec.priority})" if spec else "")


def placed_because(why: str, jobs: Mapping[str, JobSpec]) -> str:
    """The reason of a new instance, from the core's Place.reason."""
    if why == "new":
        return "new instance"
    if why.startswith("evicted by "):
        return evicted_by(why[len("evicted by "):], jobs) + "; placed again"
    if why.startswith("failed on "):
        return f"replaces the instance that {why}"
    return f"placed again ({why})"
