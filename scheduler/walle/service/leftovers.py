"""What a node runs that no record puts there: orphans registered in Consul, leftovers on a node
that comes back, instances fenced while cut off, registrations that vanished.

A mixin of the scheduler (service/scheduler.py; docs/architecture.md, "The scheduler's step",
steps 5 and 5b).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from walle.adapters.consul import ConsulError
from walle.adapters.consul.tombstones import stopped_jobs
from walle.naming import instance_id, parse_instance_id, service_unit, timer_unit
from walle.service.adopt import MISSING_GRACE
from walle.service.cluster import Snapshot, describe_error
from walle.service.executor import NodeInstances, Outcome, failed_outcomes
from walle.service.records import SlotRecord

if TYPE_CHECKING:
    from walle.service.scheduler import StepReport

log = logging.getLogger("walle.scheduler")

ACTIVE_UNIT_STATES = ("active", "activating", "reloading")  # a unit that runs (or restarts)
INSPECT_RETRY = 10.0  # a returning node that did not answer the listing is asked again then


class LeftoverReaping:
    """The scheduler's reaping (mixed into Scheduler: uses its executor, adopter, guarded
    writes and its per-term memory of node states `_node_states`, `_to_inspect`,
    `_inspect_after`, `_seen_down`)."""

    def _reap_orphans(self, snap: Snapshot, records: dict[str, SlotRecord],
                      report: StepReport) -> None:
        """Instances registered on a live node where no record puts them. Healthy ones of a
        slot with no record are adopted (lost or restored state: walle.service.adopt); the
        rest are stopped (left behind by a node that was down while its work moved, or by a
        crash between a stop and its record's removal), which keeps "one instance per slot"
        true after recovery. Instances of unknown jobs are stopped only after `walle stop`.
        A job or slot whose record cannot be read is left alone: we do not know what it holds."""
        claims = self.adopter.claim(snap, records)
        if claims.records:
            records.update(claims.records)
            self._write(claims.records, records=records)
            report.adopted += claims.adopted
        in_flight = self._in_flight()  # a batch acts on these slots now: left to it
        self._place_lost_again(snap, records,
                               [r for r in claims.lost if r.key not in in_flight], report)
        # A move's old instance, stopped by _finish_moves earlier in this step, is still
        # registered in this step's snapshot: it is the move's to stop, never an orphan.
        moving = {(r.key, r.previous.node) for r in snap.records.values()
                  if r.previous is not None}
        orphans = [(f.job, f.slot, f.node) for f in claims.reap
                   if instance_id(f.job, f.slot) not in in_flight
                   and (instance_id(f.job, f.slot), f.node) not in moving]
        if orphans:
            log.warning("stopping %d orphaned instance(s): %s", len(orphans),
                        ", ".join(f"{j}-{s}@{n}" for j, s, n in orphans))
            outcomes = self._per_job("stop orphans", self.executor.stop_instances, orphans,
                                     lambda o: o[0],
                                     failed_outcomes(lambda o: instance_id(*o[:2])))
            for key, outcome in outcomes.items():
                if outcome.ok:
                    report.stopped.append(f"orphan {key}")

    def _relist_nodes(self, why: str) -> None:
        """Consul was out of reach: every node's fence may have fired meanwhile (walle-fence
        stops a node's units when it loses Consul) without any node ever reading as down, so
        list every ready node again at the next step (_reap_leftovers, _restart_fenced)."""
        if self._node_states:
            log.warning("%s: listing what every node runs at the next step", why)
        self._node_states = {}

    def _reap_leftovers(self, snap: Snapshot, records: dict[str, SlotRecord],
                        report: StepReport, now: float) -> None:
        """Stop what a node that comes back still runs although its work moved on: cron
        timers, batch units and services (registered or not). Consul registrations alone
        cannot show them (cron and batch register nothing), so the node is asked (manifests
        and walle-* units, one command for all such nodes), and what it should run but does
        not is started again (_restart_fenced). Only nodes back from down (in a snapshot, or
        seen failed by the health watch in between), and at a new leader's first step every
        ready node, once per term: not every step."""
        with self._seen_lock:
            seen_down, self._seen_down = self._seen_down, set()
        for name, info in snap.nodes.items():
            was = self._node_states.get(name)
            if info.state == "down":
                self._to_inspect.discard(name)
            elif was is None or was == "down" or name in seen_down:
                self._to_inspect.add(name)
        self._node_states = {n: info.state for n, info in snap.nodes.items()}
        due = sorted(n for n in self._to_inspect if self._inspect_after.get(n, -1.0) <= now)
        if not due:
            return
        listings = self._list_instances(due)
        for node in due:
            if node in listings:
                self._to_inspect.discard(node)
                self._inspect_after.pop(node, None)
            else:
                self._inspect_after[node] = now + INSPECT_RETRY
        self._restart_fenced(snap, records, listings, report)
        leftovers = self._leftovers(snap, records, listings)
        if not leftovers:
            return
        log.warning("stopping %d instance(s) left on returning node(s) where no record puts "
                    "them: %s", len(leftovers), ", ".join(f"{j}-{s}@{n}" for j, s, n in leftovers))
        outcomes = self._per_job("stop leftovers", self.executor.stop_instances, leftovers,
                                 lambda o: o[0], failed_outcomes(lambda o: instance_id(*o[:2])))
        for (job, slot, node) in leftovers:
            outcome = outcomes.get(instance_id(job, slot), Outcome(False, "no result"))
            if outcome.ok:
                report.stopped.append(f"leftover {job}-{slot}@{node}")
            else:  # the node is asked again later
                self._to_inspect.add(node)
                self._inspect_after[node] = now + INSPECT_RETRY

    def _restart_fenced(self, snap: Snapshot, records: dict[str, SlotRecord],
                        listings: dict[str, NodeInstances], report: StepReport) -> None:
        """Running service and cron instances whose node keeps their manifest but whose unit
        is not active there (stopped, or unloaded since): a node cut off for longer than its
        fence stopped them (roles/node walle-fence), or a node rebooted, and it came back
        within the down grace, so they were never moved. Place them again where they are
        (idempotent: a unit that runs keeps its process). Batch instances are left to the
        batch probe: a stopped run is a failed run, not one to start silently again."""
        fenced = []
        in_flight = self._in_flight()
        for r in records.values():
            spec = snap.jobs.get(r.alloc.job)
            listing = listings.get(r.alloc.node)
            if (spec is None or listing is None or r.alloc.state != "running" or r.key in in_flight
                    or spec.kind == "batch" or r.key in snap.blocked_slots
                    or r.alloc.job in snap.frozen_jobs):
                continue
            unit = (timer_unit if spec.kind == "cron" else service_unit)(r.alloc.job,
                                                                         r.alloc.slot)
            if r.key in listing.manifests and listing.units.get(unit) not in ACTIVE_UNIT_STATES:
                fenced.append(r)
        if not fenced:
            return
        log.warning("starting %d instance(s) again on their own node (not active there: "
                    "fenced while cut off, or rebooted): %s", len(fenced),
                    ", ".join(f"{r.key}@{r.alloc.node}" for r in fenced))
        self._place_again(snap, records, fenced, report, "")

    def _leftovers(self, snap: Snapshot, records: dict[str, SlotRecord],
                   listings: dict[str, NodeInstances]) -> list[tuple[str, int, str]]:
        """(job, slot, node) of listed instances no record puts on their node. Left alone:
        instances Consul has registered (the adopter sorts those out), those of a job or slot
        whose record cannot be read (hands off), unclaimed ones (a job with neither a record
        nor a tombstone: the state looks lost, walle.service.adopt), and those of a slot of a
        known job that has no record at all (lost state too: only a registered service can be
        adopted; a cron or batch instance is reported, not killed)."""
        claimed = {(r.alloc.node, key) for key, r in records.items()}
        claimed |= {(r.previous.node, key) for key, r in records.items() if r.previous}
        stopped: frozenset[str] | None = None
        in_flight = self._in_flight()
        out = []
        for node, listing in sorted(listings.items()):
            for iid in sorted(listing.instance_ids()):
                parsed = parse_instance_id(iid)
                if (parsed is None or (node, iid) in claimed or iid in in_flight
                        or (node, iid) in snap.health.instances
                        or parsed[0] in snap.frozen_jobs or iid in snap.blocked_slots):
                    continue
                if parsed[0] not in snap.jobs and iid not in records:
                    stopped = stopped_jobs(self.api) if stopped is None else stopped
                    if parsed[0] not in stopped:
                        self._note(f"{iid}@{node}", "runs unclaimed (no job, no record, no "
                                   "tombstone): kept; `walle stop` the job to stop it")
                        continue
                spec = snap.jobs.get(parsed[0])
                if spec is not None and iid not in records and parsed[1] < spec.count:
                    # a slot with no record at all (lost state): not stopped blindly
                    self._note(f"{iid}@{node}", "runs with no record for its slot: kept")
                    continue
                out.append((parsed[0], parsed[1], node))
        return out

    def _list_instances(self, nodes: Iterable[str]) -> dict[str, NodeInstances]:
        """executor.list_instances; a failure (any node's) leaves every node unanswered."""
        try:
            return self.executor.list_instances(sorted(nodes))
        except ConsulError:
            raise
        except Exception as err:  # noqa: BLE001 - asked again later
            self._note("list instances", describe_error(err), exc=err)
            return {}

    def _place_lost_again(self, snap: Snapshot, records: dict[str, SlotRecord],
                          lost: list[SlotRecord], report: StepReport) -> None:
        """Running records whose registration vanished (an agent restart, an old backup):
        place them again on their own node. The modules are idempotent, so a unit that still
        runs keeps its process and gets its registration back; only if that fails is the
        record failed (the playbook's rescue has then removed the unit: no second copy)."""
        if not lost:
            return
        outcomes = self._place_again(snap, records, lost, report,
                                     f"lost: registered nowhere for {MISSING_GRACE:.0f}s; ")
        self.adopter.replaced([r.key for r in lost if outcomes.get(r.key, Outcome(False)).ok])

    def _place_again(self, snap: Snapshot, records: dict[str, SlotRecord],
                     again: list[SlotRecord], report: StepReport,
                     why: str) -> dict[str, Outcome]:
        """Place running records again where they are (idempotent); one that fails is failed
        with `why` + the error."""
        outcomes = self._place([r.alloc for r in again], snap)
        now = self.clock()
        failed: dict[str, SlotRecord] = {}
        for r in again:
            outcome = outcomes.get(r.key, Outcome(False, "no result"))
            if outcome.ok:
                report.placed.append(f"{r.key}@{r.alloc.node}")
                continue
            failed[r.key] = records[r.key] = r.failed(why + outcome.error, now)
            report.failed[r.key] = why + outcome.error
        self._write(failed, records=records)
        return outcomes
