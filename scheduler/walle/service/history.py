"""Each job's recent history: what the leader did to its slots and why, for `walle events`.

One KV value per job (`walle/events/<job>`, docs/architecture.md "State in Consul"):
- `events`: the last MAX_EVENTS events, oldest first, each {seq, time, slot, node, event,
  message}; `seq` grows by one per event of the job, so a follower prints each event once;
- `unplaced`: slots with no record that the leader cannot place now, slot -> {state, reason,
  refused} (`walle status JOB` shows them; a slot evicted with nowhere to go stays `evicted`);
- `count`: the count the leader last saw, so a change is recorded as `scaled` once, across
  leaders.
The body stays under SIZE_CAP (well below Consul's 512 KiB value limit): messages are cut at
MESSAGE_MAX and the oldest events go first.

Only the leader writes, after its step's record writes, with the same leader guard (CAS on
the value's ModifyIndex plus the check-session op). A history write never breaks a step:
a failure is logged and the step goes on (the events of that step are lost, the records are
not). Repeated refusals are not events: a slot that cannot be placed writes one `cannot place`
event per distinct reason (the reason lives in its record or in `unplaced`).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from walle.adapters.consul import StateStore
from walle.core import Plan
from walle.jobspec import JobSpec
from walle.naming import events_key, instance_id, parse_instance_id
from walle.service.records import SlotRecord, evicted_by

if TYPE_CHECKING:
    from walle.service.scheduler import StepReport

log = logging.getLogger("walle.scheduler")

MAX_EVENTS = 100
MESSAGE_MAX = 500
SIZE_CAP = 128 * 1024  # bytes of JSON; Consul refuses values over 512 KiB


@dataclass(frozen=True)
class SlotEvent:
    time: float
    event: str  # placed, running, passing, check failed, failed, lost, moved, drained, ...
    message: str = ""
    slot: int | None = None  # None: the job as a whole (scaled, rolled back)
    node: str = ""
    seq: int = 0  # set when added to a history


UNPLACED_STATES = ("pending", "evicted")


@dataclass(frozen=True)
class Unplaced:
    """A slot with no record the leader cannot place: shown like a record (SlotRecord.why)."""

    state: str  # pending, or evicted
    reason: str = ""  # e.g. evicted by batch-7-0 (priority 90)
    refused: str = ""  # why no node takes it now

    @property
    def why(self) -> str:
        return "; ".join(part for part in (self.reason, self.refused) if part)


@dataclass(frozen=True)
class JobHistory:
    events: tuple[SlotEvent, ...] = ()
    unplaced: Mapping[int, Unplaced] = field(default_factory=dict)
    count: int | None = None

    @property
    def next_seq(self) -> int:
        return self.events[-1].seq + 1 if self.events else 1

    def add(self, events: list[SlotEvent]) -> JobHistory:
        """The history with `events` appended (numbered), bounded by MAX_EVENTS and SIZE_CAP."""
        seq = self.next_seq
        added = tuple(replace(e, seq=seq + n, message=e.message[:MESSAGE_MAX])
                      for n, e in enumerate(events))
        kept = (self.events + added)[-MAX_EVENTS:]
        history = replace(self, events=kept)
        while len(history.events) > 1 and len(encode(history)) > SIZE_CAP:
            history = replace(history, events=history.events[len(history.events) // 4 or 1:])
        return history


def encode(history: JobHistory) -> bytes:
    return json.dumps(to_data(history), sort_keys=True, separators=(",", ":")).encode()


def to_data(history: JobHistory) -> dict[str, Any]:
    return {"events": [asdict(e) for e in history.events],
            "unplaced": {str(slot): asdict(u) for slot, u in sorted(history.unplaced.items())},
            "count": history.count}


def from_data(body: Mapping[str, Any]) -> JobHistory:
    """The history in a stored value; entries that are not events are skipped, so one bad
    entry never hides the rest (the leader rewrites the value whole on its next event)."""
    events = []
    for e in body.get("events") or []:
        try:
            events.append(SlotEvent(
                time=float(e["time"]), event=str(e["event"]), message=str(e.get("message", "")),
                slot=None if e.get("slot") is None else int(e["slot"]),
                node=str(e.get("node") or ""), seq=int(e.get("seq", 0))))
        except (KeyError, TypeError, ValueError):
            continue
    unplaced = {}
    for slot, entry in (body.get("unplaced") or {}).items():
        if str(slot).isdigit() and isinstance(entry, Mapping):
            state = entry.get("state") if entry.get("state") in UNPLACED_STATES else "pending"
            unplaced[int(slot)] = Unplaced(state,
                                           str(entry.get("reason") or ""),
                                           str(entry.get("refused") or ""))
    count = body.get("count")
    return JobHistory(tuple(events), unplaced,
                      count if isinstance(count, int) and not isinstance(count, bool) else None)


def step_events(report: StepReport, plan: Plan, records: Mapping[str, SlotRecord],
                jobs: Mapping[str, JobSpec], now: float) -> dict[str, list[SlotEvent]]:
    """What one step did, as events per job, in the order the step does things. `records`:
    the slot records after the step (their reasons say why an instance was placed or lost)."""
    out: dict[str, list[SlotEvent]] = defaultdict(list)

    def add(key: str, event: str, message: str = "", node: str = "") -> None:
        parsed = parse_instance_id(key)
        if parsed is None:
            return
        record = records.get(key)
        node = node or (record.alloc.node if record else "")
        out[parsed[0]].append(SlotEvent(now, event, message, parsed[1], node))

    for key in report.adopted:
        add(key, "adopted", "found running with no record: kept")
    for key in report.running:
        add(key, "running", "checks passing")
    for key in report.checks_failing:
        add(key, "check failed", "checks critical; systemd may restart it in place")
    for key in report.checks_passing:
        add(key, "passing", "checks passing again")
    for key in report.finished:
        add(key, "finished", "complete")
    stops = {st.alloc.key: st for st in plan.stops}
    evictions = {e.alloc.key: e for e in plan.evictions}
    for entry in report.stopped:
        what, _, key_at = entry.rpartition(" ")  # "web-1", "web-1@node2", "orphan web-1"...
        key, _, node = key_at.partition("@")
        if key in evictions and not what and not node:
            add(key, "evicted", evicted_by(evictions[key].by, jobs), evictions[key].alloc.node)
        elif key in stops and not what and not node:
            add(key, "stopped", stops[key].reason, stops[key].alloc.node)
        else:
            add(key, "stopped", {"orphan": "orphaned instance", "leftover": "left on a node "
                                 "that came back"}.get(what, "previous instance after the move"),
                node)
    for key in report.lost:
        add(key, "lost", records[key].reason if key in records else "")
    moves = {m.new.key: m for m in plan.migrates}
    planned = {p.alloc.key for p in plan.places} | {r.new.key for r in plan.replaces}
    for entry in report.placed:
        key, _, node = entry.partition("@")
        if key in moves:
            m = moves[key]
            add(key, "drained" if m.reason.endswith("draining") else "moved",
                f"from {m.old.node}: {m.reason}", node)
        elif key in planned and key in records:
            add(key, "placed", records[key].reason, node)
        else:  # a running instance whose registration vanished, placed again where it runs
            add(key, "placed", "placed again on its node", node)
    for key_at, reason in report.failed.items():
        key, _, node = key_at.partition("@")
        add(key, "stop failed" if node else "failed", reason, node)
    for key, reason in report.refused.items():
        add(key, "cannot place", reason)
    for key, how in report.regranted.items():  # usage-driven grants, with the measured use
        add(key, "regranted", how)
    for job in report.rolled_back:
        out[job].append(SlotEvent(now, "rolled back", "to the previous version"))
    return dict(out)


def unplaced_slots(spec: JobSpec, records: Mapping[str, SlotRecord], blocked: frozenset[str],
                   refused: Mapping[str, str], evicted: Mapping[str, str],
                   before: JobHistory) -> dict[int, Unplaced]:
    """The job's slots with no record that the leader cannot place (or that lost their place
    to a higher priority), with why."""
    out = {}
    for slot in range(spec.count):
        key = instance_id(spec.name, slot)
        if key in records or key in blocked:
            continue
        was = before.unplaced.get(slot)
        if key in evicted:
            state, reason = "evicted", evicted[key]
        else:
            state, reason = (was.state, was.reason) if was else ("pending", "")
        if refused.get(key) or state == "evicted":
            out[slot] = Unplaced(state, reason, refused.get(key, ""))
    return out


def scaled(spec: JobSpec, before: JobHistory, now: float) -> list[SlotEvent]:
    """The job's count changed since the leader last recorded it."""
    if before.count is None or before.count == spec.count:
        return []
    return [SlotEvent(now, "scaled", f"count {before.count} -> {spec.count}")]


def new_refusals(before: JobHistory, unplaced: Mapping[int, Unplaced],
                 now: float) -> list[SlotEvent]:
    """`cannot place` events of slots without a record: one per distinct reason, not one per
    step."""
    out = []
    for slot, u in sorted(unplaced.items()):
        was = before.unplaced.get(slot)
        if u.refused and (was is None or was.refused != u.refused):
            out.append(SlotEvent(now, "cannot place", u.why, slot))
    return out


class HistoryWriter:
    """The leader's side: remembers each job's stored history and ModifyIndex (read once per
    term, then known from its own writes) and appends to it. One per leadership term."""

    def __init__(self, store: StateStore, session: Callable[[], str | None]):
        self.store = store
        self.session = session
        self._known: dict[str, tuple[JobHistory, int]] = {}
        self._read_all = False
        # inside batch(): job -> (its update's arguments, the new history, expected index)
        self._batch: dict[str, tuple[tuple, JobHistory, int]] | None = None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Write the updates made inside together, at the end: a few transactions for all
        jobs instead of one round trip per job. A job whose CAS lost (or whose chunk did not
        apply) is updated again alone, from a fresh read, like update() does."""
        self._batch = {}
        try:
            yield
        finally:
            pending, self._batch = self._batch, None
            if pending:
                self._flush(pending)

    def _flush(self, pending: dict[str, tuple[tuple, JobHistory, int]]) -> None:
        session = self.session()
        try:
            if not session:
                raise RuntimeError("not the leader")
            result = self.store.put_many_events(
                [(job, to_data(new), index) for job, (_, new, index) in pending.items()],
                session=session)
        except Exception as err:  # noqa: BLE001 - history must never break a step
            log.warning("could not record events of %s: %s", ", ".join(sorted(pending)), err)
            for job in pending:
                self._known.pop(job, None)
            return
        for job, (args, new, _) in pending.items():
            new_index = result.indexes.get(events_key(job))
            if new_index:
                self._known[job] = (new, new_index)
            elif not result.lost_leadership:  # not applied: alone, from a fresh read
                self._known.pop(job, None)
                self.update(job, *args)

    def current(self, job: str) -> JobHistory:
        """The job's stored history (an empty one if it has none or cannot be read)."""
        return self._load(job)[0]

    def update(self, job: str, events: list[SlotEvent],
               unplaced: Mapping[int, Unplaced], count: int | None) -> bool:
        """Append `events` and set `unplaced` and `count`; write only if anything changed.
        Never raises: a failed write is logged and the caller goes on."""
        try:
            return self._update(job, events, unplaced, count)
        except Exception as err:  # noqa: BLE001 - history must never break a step
            log.warning("could not record events of %s: %s", job, err)
            self._known.pop(job, None)  # read it again next time
            return False

    def _update(self, job: str, events: list[SlotEvent],
                unplaced: Mapping[int, Unplaced], count: int | None) -> bool:
        for _attempt in range(2):  # a CAS lost to a stale index: read again, once
            history, index = self._load(job)
            new = replace(history.add(events) if events else history,
                          unplaced=dict(unplaced), count=count)
            if new == history:
                return True
            if self._batch is not None and job not in self._batch:  # written by batch()
                self._batch[job] = ((events, unplaced, count), new, index)
                return True
            session = self.session()
            if not session:
                raise RuntimeError("not the leader")
            result = self.store.put_events(job, to_data(new), index, session=session)
            if result.ok:
                new_index = next(iter(result.indexes.values()), 0)
                if new_index:
                    self._known[job] = (new, new_index)
                else:
                    self._known.pop(job, None)
                return True
            if result.lost_leadership:
                raise RuntimeError("the leader lock is held by another session")
            self._known.pop(job, None)
        raise RuntimeError("the history kept changing under us")

    def _load(self, job: str) -> tuple[JobHistory, int]:
        """The job's history and index: all jobs' in one read at the term's first use, then
        what our own writes left (a job read again only after a failed write)."""
        if not self._read_all:
            _, stored = self.store.events()
            self._known.update({name: (from_data(body), index)
                                for name, (body, index) in stored.items()})
            self._read_all = True
        elif job not in self._known:
            _, stored = self.store.events(job)
            body, index = stored.get(job, ({}, 0))
            self._known[job] = (from_data(body), index)
        return self._known.setdefault(job, (JobHistory(), 0))
