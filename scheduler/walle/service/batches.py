"""Batch jobs run once: the leader's side of docs/architecture.md, "Batch jobs run once".

A mixin of the scheduler (service/scheduler.py): finished runs committed by their node
(walle/done/) become done before anything is placed (`_take_commits`); running batch units
are read every BATCH_PROBE seconds (`_finish_batches`); pending batch records a previous
leader left are settled from their node before anything is placed again (`_settle_batches`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from walle.naming import service_unit
from walle.service.cluster import Snapshot
from walle.service.decide import take_commits
from walle.service.executor import Outcome
from walle.service.records import SlotRecord

if TYPE_CHECKING:
    from walle.service.scheduler import StepReport

log = logging.getLogger("walle.scheduler")

BATCH_PROBE = 5.0  # seconds between reads of running batch units


class BatchWork:
    """The scheduler's batch handling (mixed into Scheduler: uses its executor, its guarded
    writes and its per-term memory `_unsettled`, `_started`, `_last_settle`,
    `_last_batch_probe`)."""

    def _take_commits(self, snap: Snapshot, records: dict[str, SlotRecord],
                      report: StepReport, now: float) -> None:
        """Finished batch runs (decide.take_commits) become done before anything is placed:
        a node may have died or been cut off right after the run, and reading its commit
        first is what keeps the run from being repeated. Each commit is deleted in the
        write that records it; one that matches no current placement is deleted unused."""
        changed, consumed = take_commits(snap, records, now)
        for key, record in sorted(changed.items()):
            records[key] = record
            report.finished.append(key)
            log.info("batch %s finished on %s (committed by the node)", key, record.alloc.node)
        self._write(changed, records=records, consumed=consumed)

    def _finish_batches(self, snap: Snapshot, records: dict[str, SlotRecord],
                        report: StepReport, now: float) -> None:
        """Batch instances end on their own: read their units (at most every BATCH_PROBE
        seconds) and record success as `stopped` (done) and failure as `failed` (the core
        retries elsewhere, up to the job's retries)."""
        running = [r for r in records.values() if r.alloc.state == "running"
                   and (spec := snap.jobs.get(r.alloc.job)) is not None and spec.kind == "batch"
                   and snap.nodes.get(r.alloc.node) and snap.nodes[r.alloc.node].state != "down"]
        if not running or now - self._last_batch_probe < BATCH_PROBE:
            return
        self._last_batch_probe = now
        units = {(r.alloc.node, service_unit(r.alloc.job, r.alloc.slot)): r for r in running}
        probes = self._per_job("probe", self.executor.probe_units, list(units),
                               lambda where: units[where].alloc.job)
        changed: dict[str, SlotRecord] = {}
        for where, props in probes.items():
            # placed by this leader: its playbook started the unit (ran = True)
            progress = batch_progress(props, ran=True)
            if progress[0] == "absent":  # its unit file is gone: it cannot finish
                progress = ("failed", "its unit is not on the node (removed?)")
            self._record_progress(units[where], progress, changed, records, report, now)
        self._write(changed, records=records)

    def _record_progress(self, record: SlotRecord, progress: tuple[str, str],
                         changed: dict[str, SlotRecord], records: dict[str, SlotRecord],
                         report: StepReport, now: float) -> None:
        """Record what a batch unit did (batch_progress): done -> stopped, failed -> failed
        with the reason, running -> running; "absent" is the caller's business."""
        state, reason = progress
        key = record.key
        if state == "done":  # the core's `stopped`; the operator's `complete`
            done = record.with_alloc(replace(record.alloc, state="stopped"), now)
            changed[key] = records[key] = done.marked("complete", "finished successfully")
            report.finished.append(key)
        elif state == "failed":
            changed[key] = records[key] = record.failed(reason, now)
            report.failed[key] = reason
        elif state == "running" and record.alloc.state != "running":
            changed[key] = records[key] = record.with_alloc(replace(record.alloc,
                                                                    state="running"), now)
            report.running.append(key)

    def _settle_batches(self, snap: Snapshot, records: dict[str, SlotRecord],
                        changed: dict[str, SlotRecord], report: StepReport,
                        now: float) -> None:
        """Pending batch instances a previous leader left (its playbook may have started
        them, and they may have finished since): ask their node before placing anything.
        A unit that ran is recorded as done or failed, an active one as running; only one
        that never started is placed. A node that does not answer is asked again (every
        BATCH_PROBE s) and nothing is started meanwhile; if it goes down, the core re-places
        the slot (at-least-once: docs/architecture.md, "Batch jobs run once")."""
        live: dict[tuple[str, str], SlotRecord] = {}
        for key in sorted(self._unsettled):
            r = records.get(key)
            node = snap.nodes.get(r.alloc.node) if r else None
            if (r is None or r.alloc.state != "pending" or r.alloc.job not in snap.jobs
                    or node is None or node.state == "down"):
                if r is None or r.alloc.node not in snap.away:  # away: ask when it is back
                    self._unsettled.discard(key)  # settled otherwise: stopped, moved, lost
                continue
            live[(r.alloc.node, service_unit(r.alloc.job, r.alloc.slot))] = r
        if not live or now - self._last_settle < BATCH_PROBE:
            return
        self._last_settle = now
        probes = self._per_job("probe", self.executor.probe_units, list(live),
                               lambda where: live[where].alloc.job)
        listings = self._list_instances({node for node, _ in live})
        never_started = []
        for where, r in live.items():
            props, listing = probes.get(where), listings.get(where[0])
            if props is None or listing is None:
                continue  # no answer: ask again, start nothing
            self._unsettled.discard(r.key)
            progress = batch_progress(props, ran=r.key in listing.manifests)
            if progress[0] == "absent":
                never_started.append(r)
            else:
                self._record_progress(r, progress, changed, records, report, now)
        if never_started:
            log.info("placing %d pending batch instance(s) that never started: %s",
                     len(never_started), ", ".join(r.key for r in never_started))
        outcomes = self._place([r.alloc for r in never_started], snap)
        for r in never_started:
            outcome = outcomes.get(r.key, Outcome(False, "no result"))
            if not outcome.ok:
                changed[r.key] = records[r.key] = r.failed(outcome.error, now)
                report.failed[r.key] = outcome.error


def batch_progress(props: dict[str, str], ran: bool) -> tuple[str, str]:
    """What a batch unit did, from `systemctl show` (executor.probe_units) and whether it is
    known to have started (`ran`: a placement of this leader, or the instance's manifest on
    the node, which place.yml writes right after starting the unit): (state, reason), state
    one of running, done, failed, absent (never started). systemd unloads a unit that
    finished successfully, and an unloaded unit reads inactive with no start timestamp, just
    like one that never ran: the manifest tells them apart. Batch units are written with
    RemainAfterExit=yes, so a finished run reads active (exited) and is never unloaded: that
    closes the window in which a leader killed inside place.yml, before the manifest was
    written, left no trace of a run that then finished."""
    state = props.get("ActiveState")
    if props.get("LoadState") == "not-found":
        return "absent", ""  # no unit file on the node: never placed there (or removed)
    if state == "active" and props.get("SubState") == "exited":
        if props.get("Result") == "success" and props.get("ExecMainStatus") == "0":
            return "done", ""
        return "failed", f"exited: {props.get('Result')} (status {props.get('ExecMainStatus')})"
    if state in ("active", "activating", "deactivating", "reloading"):
        return "running", ""
    ran = ran or props.get("InactiveExitTimestampMonotonic", "0") not in ("", "0")
    if state != "failed" and not ran:
        return "absent", ""
    if state != "failed" and props.get("Result") == "success" \
            and props.get("ExecMainStatus") == "0":
        return "done", ""
    return "failed", f"exited: {props.get('Result')} (status {props.get('ExecMainStatus')})"

