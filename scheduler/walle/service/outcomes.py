"""What a finished executor call changes, and how calls run beside the loop or within the step.

A mixin of the scheduler (service/scheduler.py; docs/architecture.md, "Batches run beside the
loop"): `_dispatch` hands one executor call to the dispatcher (service/dispatch.py) or, inline,
runs it at once; `_apply_finished` applies the outcomes of the batches that ended since the last
step; the callbacks `_stopped`, `_placed`, `_regranted`, `_usage_regranted` and
`_previous_stopped` turn a batch's outcome into guarded record writes, for that batch's items
only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from walle.core import Allocation
from walle.naming import IN_FLIGHT_KEY
from walle.service.cluster import Snapshot
from walle.service.executor import Outcome
from walle.service.records import SlotRecord, attempt_of

if TYPE_CHECKING:
    from walle.service.scheduler import StepReport

log = logging.getLogger("walle.scheduler")

# the in-flight slots `walle plan` is told of at most (about 30 bytes each: the note stays far
# below Consul's 512 KB value limit); the count of the others is published with them
MAX_PUBLISHED_IN_FLIGHT = 10_000


class DispatchOutcomes:
    """The scheduler's side of service/dispatch.py (mixed into Scheduler: uses its dispatcher,
    its guarded writes `_write`, `_maybe_roll_back`, its elastic grants and its per-term memory
    `_started`)."""

    # ----- what a finished batch changes (applied by the step after it, or inline) ----------
    def _previous_stopped(self, stopped: list[Allocation], outcomes: dict[str, Outcome],
                          snap: Snapshot, records: dict[str, SlotRecord], report: StepReport,
                          now: float) -> None:
        """The outcome of _finish_moves' stops: the slot forgets its previous instance."""
        changed: dict[str, SlotRecord] = {}
        for previous in stopped:
            key = previous.key
            outcome = outcomes.get(key, Outcome(True))
            if not outcome.ok:  # the previous instance keeps running; the next step tries again
                report.failed[f"{key}@{previous.node}"] = f"stop: {outcome.error}"
                continue
            r = records.get(key)
            if r is not None and r.previous is not None and _same_placement(r.previous,
                                                                            previous):
                changed[key] = records[key] = replace(r, previous=None)
            report.stopped.append(f"{key}@{previous.node}")
        self._write(changed, records=records)

    def _stopped(self, stopped: list[Allocation], outcomes: dict[str, Outcome],
                 snap: Snapshot, records: dict[str, SlotRecord], report: StepReport,
                 now: float, told: bool = False) -> None:
        """Stopped (or evicted) instances lose their record; a failed stop keeps it (the next
        step tries again). `told`: the deciding step reported the stops already."""
        deletes = []
        for a in stopped:
            outcome = outcomes.get(a.key, Outcome(True))
            r = records.get(a.key)
            if outcome.ok and r is not None and _same_placement(r.alloc, a):
                deletes.append(records.pop(a.key))
                if not told:
                    report.stopped.append(a.key)
            elif not outcome.ok:
                report.failed[a.key] = f"stop: {outcome.error}"
        self._write({}, deletes)

    def _placed(self, placed: list[Allocation], outcomes: dict[str, Outcome], snap: Snapshot,
                records: dict[str, SlotRecord], report: StepReport, now: float, *,
                replaced: set[str], told: bool) -> None:
        """A placement that failed fails its record (a new version that cannot even start
        rolls its job back); one whose slot moved on meanwhile is left to what it is now.
        `told`: the deciding step reported the placements already."""
        after: dict[str, SlotRecord] = {}
        for a in placed:
            key = a.key
            outcome = outcomes.get(key, Outcome(False, "no result"))
            if outcome.ok:
                self._started.add((key, attempt_of(a)))
                if not told:
                    report.placed.append(f"{key}@{a.node}")
                continue
            rec = records.get(key)
            if rec is None or not _same_placement(rec.alloc, a):
                continue
            reason = outcome.error
            spec = snap.jobs.get(a.job)
            if key in replaced and spec is not None:  # the rollout failed
                rollback = self._maybe_roll_back(snap, spec, rec.alloc, report)
                reason += f"; {rollback}" if rollback else ""
            report.failed[key] = reason
            after[key] = records[key] = rec.failed(reason, now)
        self._write(after, records=records)

    def _regranted(self, regranted: list[Allocation], outcomes: dict[str, Outcome],
                   snap: Snapshot, records: dict[str, SlotRecord], report: StepReport,
                   now: float) -> None:
        """Grants applied on the node are recorded (a failed one is planned again)."""
        grants: dict[str, SlotRecord] = {}
        for a in regranted:
            r = records.get(a.key)
            if outcomes.get(a.key, Outcome(False)).ok and r is not None \
                    and _same_placement(r.alloc, a):
                grants[a.key] = records[a.key] = replace(r, alloc=replace(a,
                                                                          state=r.alloc.state))
        self._write(grants, records=records)


    def _usage_regranted(self, allocs: list[Allocation], outcomes: dict[str, Outcome],
                         snap: Snapshot, records: dict[str, SlotRecord], report: StepReport,
                         now: float, *, messages: dict[str, str]) -> None:
        """The outcome of a usage-driven regrant: recorded as any regrant, and each change
        restarts its instance's streak (ElasticGrants) and is reported with its reason."""
        self._regranted(allocs, outcomes, snap, records, report, now)
        done = {a.key for a in allocs if outcomes.get(a.key, Outcome(False)).ok}
        self.elastic.applied(done, now)
        for a in allocs:
            if a.key in done:
                report.regranted[a.key] = messages[a.key]
                log.info("%s on %s: %s", a.key, a.node, messages[a.key])


    def _dispatch(self, what: str, allocs: list[Allocation],
                  run: Callable[[list[Allocation]], dict[str, Outcome]],
                  done: Callable[..., None], snap: Snapshot, records: dict[str, SlotRecord],
                  report: StepReport, now: float,
                  after: Mapping[str, str] | None = None) -> None:
        """Run `run(allocs)` (one executor call). Inline (max_inflight_batches 0) its outcome
        is applied at once; otherwise it runs beside the loop, its slots in flight, split
        into batches by node (an instance waits for the batches of its node and, if its slot
        is in `after` (slot -> node), of that node too), and each batch's
        `done(items, outcomes, snap, records, report, now)` is applied by the first step after
        it ends, with that step's state, for ITS items only: a call split over a busy and a
        free node must not read the busy half's missing outcomes as failures (chaos
        finding 9: the done batch slots of the other half were failed and run again)."""
        if not allocs:
            return
        if self.dispatcher.inline:
            done(allocs, run(allocs), snap, records, report, now)
            return
        self.dispatcher.submit(
            what, allocs, lambda a: frozenset({a.node, (after or {}).get(a.key, a.node)}),
            lambda a: a.key, run, done)

    def _apply_finished(self, snap: Snapshot, records: dict[str, SlotRecord],
                        report: StepReport, now: float) -> None:
        """Apply the outcomes of the batches that ended since the last step (of this term
        only). A write that fails here (Consul, a lost lock) leaves the rest unapplied: their
        records say what was intended (pending intent is placed again or settled from the
        node, a stop is planned again), as after a leader crash."""
        for batch in self.dispatcher.take_finished():
            batch.done(batch.items, batch.outcomes, snap, records, report, now)

    def _publish_in_flight(self) -> None:
        """Publish the slots this leader's batches act on now (walle/config/in-flight) when
        they changed since the last step, so that `walle plan` holds them back as the leader
        does and says so. One guarded write per step at most, none while nothing changes; a
        step sees every change of the set (submissions are its own, outcomes it applies), so
        the note is at most one step behind. Not fatal: plan then reads them as settled."""
        work = self.dispatcher.in_flight_work()
        keys = sorted(work)[:MAX_PUBLISHED_IN_FLIGHT]
        body = {"slots": {k: work[k] for k in keys}, "more": len(work) - len(keys)}
        if body != self._published_in_flight and self._publish_note(
                IN_FLIGHT_KEY, body, "the slots in flight (walle plan reads them as settled)"):
            self._published_in_flight = body

    def _in_flight(self) -> set[str]:
        """Slots a batch acts on now: the step leaves them alone until its outcome is in."""
        return self.dispatcher.in_flight()



def _same_placement(a: Allocation, b: Allocation) -> bool:
    """The same placement of a slot (its node and attempt), whatever its state or grant."""
    return a.node == b.node and attempt_of(a) == attempt_of(b)

