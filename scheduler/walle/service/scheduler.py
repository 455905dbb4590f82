"""The scheduler service: one leader (Consul session lock) reconciles desired and actual state.

Loop: wait for leadership -> watch jobs, health/membership and drain keys with blocking
queries (each change wakes the loop; a short debounce batches bursts) -> `step()`:
  1. read a snapshot (jobs, slot records, nodes, instance health);
  2. move records along with health (pending -> running when the checks pass; running ->
     failed when they stay critical; pending -> failed after the update's health timeout,
     which also rolls a failing new version back);
  3. finish graceful moves (stop the previous instance once the new one passes);
  4. plan with the pure core and act through the executor: stops, then placements (records
     are written as `pending` BEFORE the playbook runs, so a crash mid-playbook leaves intent
     the next leader re-runs idempotently), then live grant changes.
Every write is a CAS carrying a check-session guard on the leader key: a deposed leader
cannot write. Deadlines (health timeouts) wake the loop too; there is no polling sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from walle.adapters.consul import (
    ConsulApi,
    ConsulError,
    LeaderLock,
    StateStore,
    Watch,
)
from walle.adapters.consul.health import fetch_cluster_health
from walle.adapters.consul.state import alloc_key
from walle.core import Allocation, PlacementConfig, Plan, reconcile
from walle.naming import service_unit
from walle.service.cluster import Snapshot, load_snapshot, records_by_node
from walle.service.executor import Executor, Outcome
from walle.service.policy import PrivilegePolicy
from walle.service.records import SlotRecord, to_stored
from walle.service.secrets import DEFAULT_SECRETS_DIR, SecretReader
from walle.spec import JobSpec, parse_spec

log = logging.getLogger("walle.scheduler")

FAILED_CHECK_GRACE = 10.0  # a running instance critical this long is moved elsewhere
BATCH_PROBE = 5.0  # seconds between reads of running batch units
MIN_WAKE = 0.05


@dataclass
class SchedulerConfig:
    name: str = "walle-scheduler"
    inventory: str = ""
    node_consul_addr: str = "http://127.0.0.1:8500"
    seed: int = 0
    strategy: str = "spread"
    lock_ttl: int = 10
    lock_delay: float = 15.0
    session_node: str | None = None  # bind the leader session to this node's serfHealth
    resync: float = 30.0  # re-read everything at least this often
    debounce: float = 0.05  # batch changes that arrive together
    register: bool = True
    playbook_timeout: float = 300.0
    # Who may leave the workload sandbox (default: nobody) and where file secrets live.
    privilege: PrivilegePolicy = field(default_factory=PrivilegePolicy)
    secrets_dir: str = DEFAULT_SECRETS_DIR


@dataclass
class StepReport:
    plan: Plan | None = None
    placed: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    running: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # batch instances that succeeded
    next_deadline: float | None = None


class LostLeadership(ConsulError):
    pass


class Backoff:
    """Capped exponential back-off for retrying the leadership contest."""

    def __init__(self, base: float = 0.5, cap: float = 10.0):
        self.base, self.cap, self.delay = base, cap, base

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.base


class Scheduler:
    def __init__(self, api: ConsulApi, config: SchedulerConfig,
                 executor: Executor | None = None, clock: Callable[[], float] = time.time):
        self.api = api
        self.store = StateStore(api)
        self.config = config
        self.clock = clock
        self.executor = executor or Executor(config.inventory, config.node_consul_addr,
                                             register=config.register,
                                             timeout=config.playbook_timeout,
                                             policy=config.privilege,
                                             secrets=SecretReader(api, config.secrets_dir))
        self.lock = LeaderLock(api, name=config.name, ttl=config.lock_ttl,
                               lock_delay=config.lock_delay, node=config.session_node,
                               on_lost=self._on_lost)
        self.placement = PlacementConfig(default_strategy=config.strategy)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._watches: list[Watch] = []
        self._resumed = False
        self._last_batch_probe = float("-inf")

    # ----- the service loop ---------------------------------------------------------------
    def run_forever(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                leader = self.lock.wait_for_leadership(timeout=30.0)
            except ConsulError as err:  # e.g. our node's serfHealth is critical: no session
                delay = backoff.next()
                log.error("cannot contend for leadership (retry in %.1fs): %s", delay, err)
                self.stopping.wait(delay)
                continue
            backoff.reset()
            if not leader:
                continue
            log.info("%s is the leader", self.config.name)
            self._resumed = False
            self._start_watches()
            try:
                self._lead()
            finally:
                self._stop_watches()
        self.lock.step_down()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def _lead(self) -> None:
        while self.lock.is_leader and not self.stopping.is_set():
            self.wake.clear()
            try:
                report = self.step()
            except LostLeadership as err:
                log.warning("lost leadership during a step: stopping work")
                self.lock.mark_lost(str(err))
                return
            except ConsulError as err:
                log.error("step failed, retrying at the next change: %s", err)
                report = StepReport(next_deadline=self.clock() + 2.0)
            timeout = self.config.resync
            if report.next_deadline is not None:
                timeout = min(timeout, max(MIN_WAKE, report.next_deadline - self.clock()))
            if self.wake.wait(timeout):
                self.stopping.wait(self.config.debounce)

    def _on_lost(self) -> None:
        log.warning("leader lock lost")
        self.wake.set()

    def _start_watches(self) -> None:
        watches = {
            "jobs": self.store.watch_jobs(wait=60.0),
            "drains": self.store.watch_drains(wait=60.0),
            "health": Watch(lambda index, wait: fetch_cluster_health(self.api, index, wait),
                            wait=60.0),
        }
        for name, watch in watches.items():
            self._watches.append(watch)
            threading.Thread(target=self._follow, args=(name, watch), daemon=True,
                             name=f"watch-{name}").start()

    def _follow(self, name: str, watch: Watch) -> None:
        try:
            for _ in watch:
                self.wake.set()
        except ConsulError as err:  # the loop's resync covers the gap; say why
            log.error("watch %s ended: %s", name, err)

    def _stop_watches(self) -> None:
        for watch in self._watches:
            watch.stop()
        self._watches.clear()

    # ----- one reconciliation step ----------------------------------------------------------
    def step(self) -> StepReport:
        now = self.clock()
        snap = load_snapshot(self.api, self.store)
        report = StepReport()
        records = dict(snap.records)
        changed: dict[str, SlotRecord] = {}
        if not self._resumed:
            self._resume(snap, records, changed, report)
            self._resumed = True
        self._advance_health(snap, records, changed, report, now)
        self._write(changed, records=records)
        changed.clear()
        self._finish_moves(snap, records, changed, report)
        self._write(changed, records=records)
        changed.clear()
        self._reap_orphans(snap, records, report)
        self._finish_batches(snap, records, report, now)

        plan = reconcile(snap.jobs, [r.alloc for r in records.values()], snap.nodes,
                         seed=self.config.seed, now=now, config=self.placement)
        report.plan = plan
        for failure in plan.failures:
            log.warning("cannot place %s slots %s: %s", failure.job, failure.slots,
                        failure.message)
        if not plan.is_empty:
            self._execute(plan, snap, records, report, now)
        report.next_deadline = self._next_deadline(snap, records)
        return report

    def _resume(self, snap: Snapshot, records: dict[str, SlotRecord],
                changed: dict[str, SlotRecord], report: StepReport) -> None:
        """A new leader finishes what the last one started: pending instances are placed again
        (the modules are idempotent: a unit already running unchanged keeps its PID), and
        running instances whose checks pass are adopted as they are."""
        pending = [r for r in records.values() if r.alloc.state == "pending"
                   and r.alloc.job in snap.jobs and r.alloc.node in snap.nodes
                   and snap.nodes[r.alloc.node].state != "down"]
        if not pending:
            return
        log.info("resuming %d pending instance(s) left by the previous leader", len(pending))
        outcomes = self.executor.place([(r.alloc, snap.jobs[r.alloc.job]) for r in pending],
                                       snap.addresses)
        for r in pending:
            outcome = outcomes.get(r.key)
            if outcome is not None and not outcome.ok:
                failed = _failed(r.alloc)
                changed[r.key] = records[r.key] = r.with_alloc(failed, self.clock())
                report.failed[r.key] = outcome.error

    def _advance_health(self, snap: Snapshot, records: dict[str, SlotRecord],
                        changed: dict[str, SlotRecord], report: StepReport, now: float) -> None:
        for key, record in list(records.items()):
            a = record.alloc
            spec = snap.jobs.get(a.job)
            if spec is None or a.state not in ("pending", "running"):
                continue
            status = _instance_health(spec, snap, a)
            if a.state == "pending" and status == "passing":
                changed[key] = records[key] = record.with_alloc(replace(a, state="running"), now)
                report.running.append(key)
            elif a.state == "pending" and now - record.state_since > spec.update.health_timeout:
                log.warning("%s did not pass its checks on %s within %.0fs", key, a.node,
                            spec.update.health_timeout)
                changed[key] = records[key] = record.with_alloc(_failed(a), now)
                report.failed[key] = "health timeout"
                self._maybe_roll_back(snap, spec, a, report)
            elif a.state == "running" and status == "critical":
                if record.critical_since is None:
                    # systemd restarts a crashed process in place (Restart=); give it time
                    changed[key] = records[key] = replace(record, critical_since=now)
                elif now - record.critical_since > FAILED_CHECK_GRACE:
                    changed[key] = records[key] = record.with_alloc(_failed(a), now)
                    report.failed[key] = "checks critical"
            elif a.state == "running" and record.critical_since is not None:
                changed[key] = records[key] = replace(record, critical_since=None)

    def _maybe_roll_back(self, snap: Snapshot, spec: JobSpec, alloc: Allocation,
                         report: StepReport) -> None:
        stored = snap.stored_jobs.get(spec.name)
        if not (spec.update.auto_rollback and stored and stored.previous):
            return
        if alloc.spec_digest != spec.digest():
            return
        previous = parse_spec(dict(stored.previous["spec"]), source=f"{spec.name} previous")
        if self.store.put_job(previous, stored.modify_index, rolled_back_from=spec.digest()):
            log.warning("rolled %s back from %s to %s", spec.name, spec.digest(),
                        previous.digest())
            report.rolled_back.append(spec.name)

    def _finish_moves(self, snap: Snapshot, records: dict[str, SlotRecord],
                      changed: dict[str, SlotRecord], report: StepReport) -> None:
        """Stop the previous instance of slots whose new instance now passes (or failed: then
        the old one keeps its place only if the new one is gone for good)."""
        done = [r for r in records.values() if r.previous is not None
                and r.alloc.state == "running"]
        alive = [r for r in done if snap.nodes.get(r.previous.node)
                 and snap.nodes[r.previous.node].state != "down"]
        outcomes = self.executor.stop([r.previous for r in alive]) if alive else {}
        for r in done:
            outcome = outcomes.get(r.key, Outcome(True))
            if outcome.ok:
                changed[r.key] = records[r.key] = replace(r, previous=None)
                report.stopped.append(f"{r.key}@{r.previous.node}")

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
        changed: dict[str, SlotRecord] = {}
        for where, props in self.executor.probe_units(units).items():
            record = units[where]
            if props.get("ActiveState") not in ("inactive", "failed"):
                continue
            done = props.get("Result") == "success" and props.get("ExecMainStatus") == "0"
            state = "stopped" if done else "failed"
            changed[record.key] = records[record.key] = record.with_alloc(
                replace(record.alloc, state=state), now)
            if done:
                report.finished.append(record.key)
            else:
                report.failed[record.key] = f"exited: {props.get('Result')}"
        self._write(changed, records=records)

    def _reap_orphans(self, snap: Snapshot, records: dict[str, SlotRecord],
                      report: StepReport) -> None:
        """Instances registered on a live node where no record puts them: left behind by a node
        that was down while its work moved elsewhere (or by a crash between a stop and its
        record's removal). Stopping them keeps "one instance per slot" true after recovery."""
        expected = {(node, key) for node, keys in records_by_node(records).items()
                    for key in keys}
        orphans = []
        for node, sid in snap.health.instances:
            parsed = parse_instance_id(sid)
            node_info = snap.nodes.get(node)
            if parsed is None or (node, sid) in expected or node_info is None \
                    or node_info.state == "down":
                continue
            if parsed[0] in snap.jobs or sid in records:
                orphans.append((*parsed, node))
        if orphans:
            log.warning("stopping %d orphaned instance(s): %s", len(orphans),
                        ", ".join(f"{j}-{s}@{n}" for j, s, n in orphans))
            for key, outcome in self.executor.stop_instances(orphans).items():
                if outcome.ok:
                    report.stopped.append(f"orphan {key}")

    def _execute(self, plan: Plan, snap: Snapshot, records: dict[str, SlotRecord],
                 report: StepReport, now: float) -> None:
        # 1. stops and evictions: the room they free is what the placements were planned on
        gone = [s.alloc for s in plan.stops] + [e.alloc for e in plan.evictions]
        live = [a for a in gone if a.node in snap.nodes and snap.nodes[a.node].state != "down"
                and a.state in ("pending", "running")]
        outcomes = self.executor.stop(live)
        deletes = []
        for a in gone:
            outcome = outcomes.get(a.key, Outcome(True))
            if outcome.ok and a.key in records:
                deletes.append(records.pop(a.key))
                report.stopped.append(a.key)
            elif not outcome.ok:
                report.failed[a.key] = f"stop: {outcome.error}"
        self._write({}, deletes)

        # 2. placements: intent first (pending), then the playbook, then the outcome
        starts: dict[str, SlotRecord] = {}
        for p in plan.places:
            starts[p.alloc.key] = _new_record(records.get(p.alloc.key), p.alloc, None, now)
        for m in plan.migrates:
            keep_old = snap.nodes.get(m.old.node) and snap.nodes[m.old.node].state != "down"
            starts[m.new.key] = _new_record(records.get(m.new.key), m.new,
                                            m.old if keep_old else None, now)
        replaced = {r.new.key for r in plan.replaces}
        for r in plan.replaces:
            other_node = r.new.node != r.old.node
            starts[r.new.key] = _new_record(records.get(r.new.key), r.new,
                                            r.old if other_node else None, now)
        records.update(starts)
        self._write(starts, records=records)
        outcomes = self.executor.place(
            [(rec.alloc, snap.jobs[rec.alloc.job]) for rec in starts.values()], snap.addresses)
        after: dict[str, SlotRecord] = {}
        for key in starts:
            rec = records[key]
            outcome = outcomes.get(key, Outcome(False, "no result"))
            if outcome.ok:
                report.placed.append(f"{key}@{rec.alloc.node}")
                continue
            report.failed[key] = outcome.error
            after[key] = records[key] = rec.with_alloc(_failed(rec.alloc), now)
            if key in replaced:  # a new version that cannot even start: the rollout failed
                self._maybe_roll_back(snap, snap.jobs[rec.alloc.job], rec.alloc, report)
        self._write(after, records=records)

        # 3. live changes: resources updated in place and elastic grants
        regrants = [(u.new, u.old.state) for u in plan.updates]
        regrants += [(g.new, g.old.state) for g in plan.regrants]
        regrants = [(a, state) for a, state in regrants if a.key in records]
        outcomes = self.executor.regrant([(a, snap.jobs[a.job]) for a, _ in regrants])
        grants: dict[str, SlotRecord] = {}
        for a, state in regrants:
            if outcomes.get(a.key, Outcome(False)).ok:
                grants[a.key] = records[a.key] = replace(records[a.key],
                                                         alloc=replace(a, state=state))
        self._write(grants, records=records)

    def _next_deadline(self, snap: Snapshot, records: dict[str, SlotRecord]) -> float | None:
        deadlines = []
        for r in records.values():
            spec = snap.jobs.get(r.alloc.job)
            if spec and r.alloc.state == "pending":
                deadlines.append(r.state_since + spec.update.health_timeout + 0.1)
            if spec and r.alloc.state == "running" and r.critical_since is not None:
                deadlines.append(r.critical_since + FAILED_CHECK_GRACE + 0.1)
            if spec and spec.kind == "batch" and r.alloc.state == "running":
                deadlines.append(self._last_batch_probe + BATCH_PROBE + 0.1)
        return min(deadlines) if deadlines else None

    # ----- guarded writes -------------------------------------------------------------------
    def _write(self, put: dict[str, SlotRecord], delete: Iterable[SlotRecord] = (),
               records: dict[str, SlotRecord] | None = None) -> None:
        """Write records (CAS + leader guard), then refresh their ModifyIndex in `records` so
        later writes in the same step compare against what is stored now."""
        delete = list(delete)
        if not put and not delete:
            return
        session = self.lock.session_id
        if not self.lock.is_leader or not session:
            raise LostLeadership("not the leader: refusing to write state")
        result = self.store.write_allocs([to_stored(r) for r in put.values()],
                                         [to_stored(r) for r in delete], session=session)
        if result.lost_leadership:
            raise LostLeadership("the leader lock is held by another session")
        if not result.ok:  # a CAS lost: someone else wrote; the next step re-reads
            raise ConsulError(f"state write conflicted: {result.errors}")
        if records is not None:
            for key, record in put.items():
                index = result.indexes.get(alloc_key(record.alloc.job, record.alloc.slot))
                if index is not None:
                    records[key] = replace(record, modify_index=index)


def _instance_health(spec: JobSpec, snap: Snapshot, a: Allocation) -> str:
    """passing / critical / unknown. Jobs without a registered service count as passing once
    placed on a live node: their playbook already waited for the unit to be active."""
    if spec.service is None:
        node = snap.nodes.get(a.node)
        return "passing" if node and node.state != "down" else "unknown"
    status = snap.instance_status(a.node, a.key)
    if status is None:
        return "unknown"
    return "passing" if status == "passing" else "critical"


def parse_instance_id(sid: str) -> tuple[str, int] | None:
    """"web-3" -> ("web", 3); None for IDs that are not Walle instance IDs."""
    job, _, slot = sid.rpartition("-")
    if not job or not slot.isdigit():
        return None
    return job, int(slot)


def _failed(a: Allocation) -> Allocation:
    return replace(a, state="failed")


def _new_record(current: SlotRecord | None, alloc: Allocation, previous: Allocation | None,
                now: float) -> SlotRecord:
    index = current.modify_index if current else 0
    return SlotRecord(alloc=alloc, previous=previous, modify_index=index, state_since=now)
