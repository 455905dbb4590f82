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

One bad job, record or node never stops scheduling for the others (docs/architecture.md, "The
scheduler's step"): an exception while handling one job or slot marks that slot `failed` with
the reason in its record (a failing slot is retried with back-off, not at every step); records
that cannot be read are reported once and left alone; only Consul errors (which concern every
job) end a step, and the loop retries it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

from walle.adapters.consul import (
    BatchCommit,
    ConsulApi,
    ConsulError,
    LeaderLock,
    StateStore,
    Watch,
)
from walle.adapters.consul.health import watch_failed_nodes
from walle.adapters.consul.state import alloc_key
from walle.adapters.usage import Usage, read_node_usage
from walle.core import Allocation, Plan
from walle.core.shed import ShedPolicy, pressure_to_json
from walle.jobspec import JobSpec, SpecError, parse_spec
from walle.naming import PRESENCE_KEY, PRESSURE_KEY
from walle.service import jobs
from walle.service.adopt import Adopter
from walle.service.autoscale import DEFAULT_INTERVAL as AUTOSCALE_INTERVAL
from walle.service.autoscale import Autoscaler
from walle.service.batches import BATCH_PROBE, BatchWork
from walle.service.cluster import Snapshot, describe_error
from walle.service.decide import Defaults, decide
from walle.service.decide import retry_at as _retry_at
from walle.service.dispatch import Dispatcher
from walle.service.elastic import USAGE_INTERVAL, ElasticGrants, Reading, UsagePoller
from walle.service.executor import Executor, Outcome, failed_outcomes
from walle.service.history import (
    HistoryWriter,
    new_refusals,
    scaled,
    step_events,
    unplaced_slots,
)
from walle.service.leftovers import LeftoverReaping
from walle.service.outcomes import DispatchOutcomes
from walle.service.policy import PrivilegePolicy
from walle.service.presence import DEFAULT_DOWN_GRACE, DEFAULT_LEAVE_GRACE, NodePresence
from walle.service.records import (
    SlotRecord,
    attempt_of,
    evicted_by,
    placed_because,
    refusals,
    to_stored,
    with_node,
)
from walle.service.secrets import DEFAULT_SECRETS_DIR, SecretReader
from walle.service.shed import Shedder
from walle.service.state_cache import SnapshotReader

log = logging.getLogger("walle.scheduler")

FAILED_CHECK_GRACE = 10.0  # a running instance critical this long is moved elsewhere
CONSUL_OUTAGE = 5.0  # a snapshot that took longer: Consul was out, nodes may have fenced
MIN_WAKE = 0.05

T = TypeVar("T")


@dataclass
class SchedulerConfig:
    name: str = "walle-scheduler"
    inventory: str = ""
    node_consul_addr: str = "http://127.0.0.1:8500"
    # walle_consul_service's token_file/ca_path: paths on the nodes (params.consul_auth)
    node_consul_auth: dict[str, str] = field(default_factory=dict)
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
    # a node gone from the catalog (left: agent restart) keeps its instances this long
    node_leave_grace: float = DEFAULT_LEAVE_GRACE
    # a failed node (serfHealth critical: dead or cut off) keeps its instances this long, so
    # that a cut-off node's fence has stopped them before they start elsewhere (presence.py)
    node_down_grace: float = DEFAULT_DOWN_GRACE
    # playbook runs beside the loop at once (service/dispatch.py); 0: each within its step
    # (the loop then waits for it: the step-by-step tests and benches, which call step()
    # and read its outcome at once). `walle scheduler run` runs DEFAULT_MAX_INFLIGHT (4).
    max_inflight_batches: int = 0
    # autoscaling (service/autoscale.py): where Prometheus queries go, how often jobs are
    # measured
    prometheus_addr: str | None = None
    autoscale_interval: float = AUTOSCALE_INTERVAL
    # usage-driven grants (service/elastic.py): read measured usage this often; 0: off (usage
    # is then read every autoscale_interval, and only while a job scales on cpu or memory)
    usage_interval: float = USAGE_INTERVAL
    # shedding (core/shed.py, service/shed.py): moves off nodes under sustained pressure,
    # at most moves_per_minute cluster-wide (0: off); needs usage readings
    shed: ShedPolicy = field(default_factory=ShedPolicy)


@dataclass
class StepReport:
    plan: Plan | None = None
    placed: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    running: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # batch instances that succeeded
    adopted: list[str] = field(default_factory=list)  # found running with no record: kept
    checks_failing: list[str] = field(default_factory=list)  # running, checks turned critical
    checks_passing: list[str] = field(default_factory=list)  # ...and passing again
    lost: list[str] = field(default_factory=list)  # their node went down
    refused: dict[str, str] = field(default_factory=dict)  # cannot be placed: why (new reasons)
    regranted: dict[str, str] = field(default_factory=dict)  # grant moved with usage: how
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


class Scheduler(BatchWork, LeftoverReaping, DispatchOutcomes):
    def __init__(self, api: ConsulApi, config: SchedulerConfig,
                 executor: Executor | None = None, clock: Callable[[], float] = time.time,
                 usage_reader: Callable[[Iterable[str]], Usage] | None = None):
        self.api = api
        self.store = StateStore(api)
        self.config = config
        self.clock = clock
        self.executor = executor or Executor(config.inventory, config.node_consul_addr,
                                             register=config.register,
                                             timeout=config.playbook_timeout,
                                             node_consul_auth=config.node_consul_auth,
                                             policy=config.privilege,
                                             secrets=SecretReader(api, config.secrets_dir))
        self.lock = LeaderLock(api, name=config.name, ttl=config.lock_ttl,
                               lock_delay=config.lock_delay, node=config.session_node,
                               on_lost=self._on_lost)
        self.defaults = Defaults(config.strategy, config.seed, config.node_leave_grace,
                                 config.node_down_grace)
        self.placement = self.defaults.placement()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._watches: list[Watch] = []
        self._seen_lock = threading.Lock()
        self._seen_down: set[str] = set()  # nodes the health watch saw failed (since a step)
        self._last_batch_probe = float("-inf")
        self.dispatcher = Dispatcher(config.max_inflight_batches, on_finished=self.wake.set)
        # the one reading of usage per interval, shared by the grants and the autoscaler
        self.usage = UsagePoller(usage_reader or (lambda nodes: read_node_usage(api, nodes)),
                                 config.usage_interval if config.usage_interval > 0
                                 else config.autoscale_interval, clock, on_read=self.wake.set)
        self._new_term()
        self._reported: set[tuple[str, str]] = set()  # (key, reason) already logged

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
            self._new_term()
            self._start_watches()
            try:
                self._lead()
            finally:
                self._stop_watches()
                self.dispatcher.new_term()  # no longer leading: queued batches never start
        self.lock.step_down()

    def _new_term(self) -> None:
        """Forget what the last term saw: a new leader resumes, re-reads unsettled batch work
        and lists what runs on every ready node once. Outcomes of the last term's batches are
        never applied (service/dispatch.py): this term reads the state they left."""
        self.dispatcher.new_term()
        self._resumed = False
        self.adopter = Adopter(self.api, self.clock)
        self.presence = NodePresence(self.config.node_leave_grace,  # graces from our eyes
                                     self.config.node_down_grace)
        self._unsettled: set[str] = set()  # pending batch records whose outcome is unknown
        self._published_presence: dict | None = None
        self._published_in_flight: dict | None = None
        # (instance key, attempt) this leader's playbooks started: only those pending batch
        # records become running at once; any other is settled from its node first
        self._started: set[tuple[str, str]] = set()
        self._last_settle = float("-inf")
        self._node_states: dict[str, str] = {}  # node -> its state at the last step
        self._to_inspect: set[str] = set()  # nodes back (or new to this term): list them
        self._inspect_after: dict[str, float] = {}  # ...but not before (after no answer)
        self._down_since: dict[str, float] = {}  # node -> when this leader first saw it down
        self.history = HistoryWriter(self.store, lambda: self.lock.session_id)
        self.autoscaler = Autoscaler(self.api, self.store, self.history,
                                     prometheus=self.config.prometheus_addr,
                                     interval=self.config.autoscale_interval,
                                     latest_usage=lambda: self.usage.latest)
        self.reader = SnapshotReader(self.api, self.store)  # kept state: one term's only
        self.elastic = ElasticGrants()  # streaks start again with each term
        self.shedder = Shedder(self.config.shed)  # ...and so do the nodes' pressure samples
        self._published_pressure: dict | None = None

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def _lead(self) -> None:
        self.publish_defaults()
        backoff = Backoff(base=2.0, cap=60.0)
        while self.lock.is_leader and not self.stopping.is_set():
            self.wake.clear()
            try:
                report = self.step()
                backoff.reset()
            except LostLeadership as err:
                log.warning("lost leadership during a step: stopping work")
                self.lock.mark_lost(str(err))
                return
            except ConsulError as err:
                log.error("step failed, retrying at the next change: %s", err)
                self._relist_nodes("a step failed on Consul")
                report = StepReport(next_deadline=self.clock() + 2.0)
            except Exception:  # a bug outside any one job's handling: never end the loop for it
                delay = backoff.next()
                log.exception("step failed unexpectedly; retrying in %.0fs", delay)
                report = StepReport(next_deadline=self.clock() + delay)
            timeout = self.config.resync
            if report.next_deadline is not None:
                timeout = min(timeout, max(MIN_WAKE, report.next_deadline - self.clock()))
            if self.wake.wait(timeout):
                self.stopping.wait(self.config.debounce)

    def publish_defaults(self) -> None:
        """Publish the defaults this leader decides with (walle/config/placement) so that
        `walle plan` decides as it does. Not fatal: `walle plan` then says it used the
        built-in defaults."""
        try:
            session = self.lock.session_id
            result = session and self.store.put_placement_config(self.defaults.to_json(),
                                                                 session=session)
            if not result or not result.ok:
                log.warning("placement defaults not published: not the leader")
        except ConsulError as err:
            log.warning("cannot publish the placement defaults (walle plan falls back to the "
                        "built-in ones): %s", err)

    def _publish_presence(self) -> None:
        """Publish since when this leader sees nodes failed or missing (walle/config/presence)
        whenever that changes, so that `walle plan` counts the graces as the leader does.
        Not fatal: plan then counts them from its own "now"."""
        memory = self.presence.memory()
        if memory != self._published_presence and self._publish_note(
                PRESENCE_KEY, memory, "the nodes' presence (walle plan counts graces from now)"):
            self._published_presence = memory

    def _publish_note(self, key: str, body: dict, what: str) -> bool:
        """One guarded write of a value the leader publishes for `walle plan`; False (and a
        warning) when it could not be written."""
        try:
            session = self.lock.session_id
            result = session and self.store.put_leader_note(key, body, session=session)
            return bool(result and result.ok)
        except ConsulError as err:
            log.warning("cannot publish %s: %s", what, err)
            return False

    def _on_lost(self) -> None:
        log.warning("leader lock lost")
        self.dispatcher.new_term()  # queued batches never start; outcomes are never applied
        self.wake.set()

    def _start_watches(self) -> None:
        watches = {
            "jobs": self.store.watch_jobs(wait=60.0, name="watch jobs"),
            "drains": self.store.watch_drains(wait=60.0, name="watch drains"),
            "health": Watch(self._fetch_health, wait=60.0, name="watch health"),
        }
        for name, watch in watches.items():
            self._watches.append(watch)
            threading.Thread(target=self._follow, args=(name, watch), daemon=True,
                             name=f"watch-{name}").start()

    def _fetch_health(self, index: int, wait: str | None):
        """The health watch's read. It also notes the nodes it sees failed: a node that fails
        and comes back while a step is busy (a long playbook) never reads as down in any
        snapshot, yet its units may have been fenced or lost in a reboot (_reap_leftovers)."""
        index, failed = watch_failed_nodes(self.api, index, wait)
        if failed:
            with self._seen_lock:
                self._seen_down |= failed
        return index, (index, failed)  # every index move is a change: it wakes the loop

    def _follow(self, name: str, watch: Watch) -> None:
        """Wake the loop on every change for as long as we lead (until _stop_watches). The
        watch retries failed calls itself; this loop only outlives a bug in the iteration."""
        backoff = Backoff(base=1.0, cap=30.0)
        while not watch.stopped:
            try:
                for _ in watch:
                    backoff.reset()
                    self.wake.set()
            except Exception:  # never let a watch die while we lead: log it, wait, go on
                delay = backoff.next()
                log.exception("watch %s failed; following it again in %.1fs", name, delay)
                self.wake.set()  # the gap may have hidden a change: re-read now
                watch.pause(delay)

    def _stop_watches(self) -> None:
        for watch in self._watches:
            watch.stop()
        self._watches.clear()

    # ----- one reconciliation step ----------------------------------------------------------
    def step(self) -> StepReport:
        started = self.clock()
        loaded = self.reader.load()
        now = self.clock()
        if now - started > CONSUL_OUTAGE:
            self._relist_nodes("Consul answered only after %.0fs" % (now - started))
        snap = self.presence.observe(loaded, now)
        self._publish_presence()
        self._report_unreadable(snap)
        report = StepReport()
        records = dict(snap.records)
        changed: dict[str, SlotRecord] = {}
        self._take_commits(snap, records, report, now)
        self._apply_finished(snap, records, report, now)
        if not self._resumed:
            self._resume(snap, records, changed, report)
            self._resumed = True
        self._settle_batches(snap, records, changed, report, now)
        self._advance_health(snap, records, changed, report, now)
        self._write(changed, records=records)
        changed.clear()
        self._finish_moves(snap, records, changed, report, now)
        self._write(changed, records=records)
        changed.clear()
        self._reap_orphans(snap, records, report)
        self._reap_leftovers(snap, records, report, now)
        self._finish_batches(snap, records, report, now)

        plan = self._plan(snap, records, now)
        report.plan = plan
        for failure in plan.failures:
            log.warning("cannot place %s slots %s: %s", failure.job, failure.slots,
                        failure.message)
        if not plan.is_empty:
            self._execute(plan, snap, records, report, now)
        self._follow_usage(snap, records, plan, report, now)
        self._mark_slots(snap, records, plan, report, now)
        self._record_history(snap, records, plan, report, now)
        self.autoscaler.run(snap, now)  # a new count is written like `walle scale`
        self._publish_in_flight()
        report.next_deadline = self._next_deadline(snap, records, now)
        return report

    def _resume(self, snap: Snapshot, records: dict[str, SlotRecord],
                changed: dict[str, SlotRecord], report: StepReport) -> None:
        """A new leader finishes what the last one started: pending instances are placed again
        (the modules are idempotent: a unit already running unchanged keeps its PID), and
        running instances whose checks pass are adopted as they are. Pending batch instances
        are not placed blindly: their unit may have run to completion already, so they are
        settled from the node first (_settle_batches)."""
        pending = [r for r in records.values() if r.alloc.state == "pending"
                   and r.alloc.job in snap.jobs and r.alloc.node in snap.nodes
                   and snap.nodes[r.alloc.node].state != "down"]
        self._unsettled = {r.key for r in pending if snap.jobs[r.alloc.job].kind == "batch"}
        # a slot the job no longer has (scaled down while no one led) is the plan's to stop:
        # placing it again would fail (the parameters refuse it) and hold it for a back-off
        pending = [r for r in pending if r.key not in self._unsettled
                   and r.alloc.slot < snap.jobs[r.alloc.job].count]
        if not pending:
            return
        log.info("resuming %d pending instance(s) left by the previous leader", len(pending))
        outcomes = self._place([r.alloc for r in pending], snap)
        for r in pending:
            outcome = outcomes.get(r.key)
            if outcome is not None and not outcome.ok:
                changed[r.key] = records[r.key] = r.failed(outcome.error, self.clock())
                report.failed[r.key] = outcome.error

    def _advance_health(self, snap: Snapshot, records: dict[str, SlotRecord],
                        changed: dict[str, SlotRecord], report: StepReport, now: float) -> None:
        in_flight = self._in_flight()
        for key, record in list(records.items()):
            spec = snap.jobs.get(record.alloc.job)
            if spec is None or record.alloc.state not in ("pending", "running"):
                continue
            if key in in_flight:  # a batch acts on it now: its outcome comes first
                continue
            if key in self._unsettled:  # not known to have started: no health to read yet
                continue
            if (spec.kind == "batch" and record.alloc.state == "pending"
                    and (key, attempt_of(record.alloc)) not in self._started):
                # placed by an earlier leader (or one we could not see at our first step, its
                # node being down then): it may never have started, or finished already
                self._unsettled.add(key)
                continue
            if record.alloc.node in snap.away:  # its node left the catalog: held as it is
                continue
            if record.alloc.state == "running" and record.critical_since is None \
                    and _instance_health(spec, snap, record.alloc) == "passing":
                continue  # the common case, nothing to move: 100,000 of them at a step
            with self._slot_guard(key, "health", record, changed, records, report, now):
                self._advance_one(snap, spec, record, changed, records, report, now)

    def _advance_one(self, snap: Snapshot, spec: JobSpec, record: SlotRecord,
                     changed: dict[str, SlotRecord], records: dict[str, SlotRecord],
                     report: StepReport, now: float) -> None:
        a, key = record.alloc, record.key
        status = _instance_health(spec, snap, a)
        if a.state == "pending" and status == "passing":
            changed[key] = records[key] = record.with_alloc(replace(a, state="running"), now)
            report.running.append(key)
        elif a.state == "pending" and now - record.state_since > spec.update.health_timeout:
            log.warning("%s did not pass its checks on %s within %.0fs", key, a.node,
                        spec.update.health_timeout)
            reason = f"health: checks did not pass within {spec.update.health_timeout:.0f}s"
            rollback = self._maybe_roll_back(snap, spec, a, report)
            if rollback:
                reason += f"; {rollback}"
            changed[key] = records[key] = record.failed(reason, now)
            report.failed[key] = reason
        elif a.state == "running" and status == "critical":
            if record.critical_since is None:
                # systemd restarts a crashed process in place (Restart=); give it time
                changed[key] = records[key] = replace(record, critical_since=now)
                report.checks_failing.append(key)
            elif now - record.critical_since > FAILED_CHECK_GRACE:
                reason = f"health: checks critical for over {FAILED_CHECK_GRACE:.0f}s"
                changed[key] = records[key] = record.failed(reason, now)
                report.failed[key] = reason
        elif a.state == "running" and record.critical_since is not None:
            changed[key] = records[key] = replace(record, critical_since=None)
            report.checks_passing.append(key)

    def _maybe_roll_back(self, snap: Snapshot, spec: JobSpec, alloc: Allocation,
                         report: StepReport) -> str:
        """Put the job's previous version back when its new one fails. Returns "" or why the
        rollback could not be done (e.g. the kept version no longer validates): the slot's
        failure carries that, and the job stays where it is."""
        stored = snap.stored_jobs.get(spec.name)
        if not (spec.update.auto_rollback and stored and stored.previous):
            return ""
        if alloc.spec_digest != spec.digest():
            return ""
        try:
            previous = parse_spec(dict(stored.previous["spec"]),
                                  source=f"{spec.name} previous")
        except Exception as err:  # noqa: BLE001 - a bad kept version only stops the rollback
            reason = f"cannot roll back: {describe_error(err)}"
            self._note(spec.name, reason)
            return reason
        if jobs.roll_back(self.store, stored, previous, spec):
            log.warning("rolled %s back from %s to %s", spec.name, spec.digest(),
                        previous.digest())
            report.rolled_back.append(spec.name)
        return ""

    def _finish_moves(self, snap: Snapshot, records: dict[str, SlotRecord],
                      changed: dict[str, SlotRecord], report: StepReport, now: float) -> None:
        """Stop the previous instance of slots whose new instance now passes (or failed: then
        the old one keeps its place only if the new one is gone for good)."""
        in_flight = self._in_flight()
        done = [r for r in records.values() if r.previous is not None
                and r.alloc.state == "running" and r.previous.node not in snap.away
                and r.key not in in_flight]
        alive = [r.previous for r in done if snap.nodes.get(r.previous.node)
                 and snap.nodes[r.previous.node].state != "down"]
        for r in done:
            if snap.nodes.get(r.previous.node) and snap.nodes[r.previous.node].state != "down":
                continue  # stopped below
            changed[r.key] = records[r.key] = replace(r, previous=None)
            report.stopped.append(f"{r.key}@{r.previous.node}")
        self._dispatch("stop previous", alive, lambda allocs: self._stop(allocs, snap),
                       self._previous_stopped, snap, records, report, now)

    # ----- planning -----------------------------------------------------------------------
    def _plan(self, snap: Snapshot, records: dict[str, SlotRecord], now: float) -> Plan:
        """The decision (walle.service.decide: `walle plan` runs the same function)."""
        return decide(snap, records, now, seed=self.config.seed, placement=self.placement,
                      in_flight=self._in_flight(), pressure=self.shedder.pressure(),
                      on_unplannable=lambda name, err: self._note(
                          name, f"cannot plan: {describe_error(err)}", exc=err))

    def _execute(self, plan: Plan, snap: Snapshot, records: dict[str, SlotRecord],
                 report: StepReport, now: float) -> None:
        # 1. stops and evictions: the room they free is what the placements were planned on
        gone = [s.alloc for s in plan.stops] + [e.alloc for e in plan.evictions]
        live = [a for a in gone if a.node in snap.nodes and snap.nodes[a.node].state != "down"
                and a.state in ("pending", "running")]
        # beside the loop, the step that decided tells (events are worded from its plan); a
        # stop or placement that then fails is reported when its outcome is in
        told = not self.dispatcher.inline
        if told:
            report.stopped += [a.key for a in live]
        self._dispatch("stop", live, lambda allocs: self._stop(allocs, snap),
                       partial(self._stopped, told=told), snap, records, report, now)
        stopped_on = {a.key: a.node for a in live}  # an evicted slot placed again: after its stop
        stopping = {a.key for a in live}  # the others' node is down: nothing to stop there
        self._stopped([a for a in gone if a.key not in stopping], {}, snap, records, report,
                      now)

        # 2. placements: intent first (pending), then the playbook, then the outcome
        starts: dict[str, SlotRecord] = {}
        for p in plan.places:
            starts[p.alloc.key] = _new_record(records.get(p.alloc.key), p.alloc, None, now,
                                              placed_because(p.reason, snap.jobs))
        for m in plan.migrates:
            keep_old = snap.nodes.get(m.old.node) and snap.nodes[m.old.node].state != "down"
            starts[m.new.key] = _new_record(records.get(m.new.key), m.new,
                                            m.old if keep_old else None, now,
                                            f"moving here: {m.reason}")
        replaced = {r.new.key for r in plan.replaces}
        for r in plan.replaces:
            other_node = r.new.node != r.old.node
            starts[r.new.key] = _new_record(records.get(r.new.key), r.new,
                                            r.old if other_node else None, now,
                                            f"new version {r.new.spec_digest}")
        records.update(starts)
        self._write(starts, records=records)
        placing = [rec.alloc for rec in starts.values()]
        if told:
            report.placed += [f"{a.key}@{a.node}" for a in placing]
        # a new version on the same node: the old instance leaves the pool and drains first
        in_place = {r.new.key for r in plan.replaces if r.new.node == r.old.node}
        self._dispatch("place", placing,
                       lambda allocs: self._run_place(allocs, snap, in_place),
                       partial(self._placed, replaced=replaced, told=told), snap, records,
                       report,
                       now, after=stopped_on)

        # 3. live changes: resources updated in place and elastic grants
        regrants = [u.new for u in plan.updates] + [g.new for g in plan.regrants]
        regrants = [a for a in regrants if a.key in records]
        self._dispatch("regrant", regrants, lambda allocs: self._regrant(allocs, snap),
                       self._regranted, snap, records, report, now)

    def _follow_usage(self, snap: Snapshot, records: dict[str, SlotRecord], plan: Plan,
                      report: StepReport, now: float) -> None:
        """Usage-driven grants (service/elastic.py): decide on the reading that arrived since
        the last step, if any, and ask for the next one (read in the background: a slow node
        never holds the step). A node where something is being placed, moved, changed or is
        in flight waits for the next reading. The new grants are applied like any regrant
        (grants.yml, beside the loop when batches are)."""
        changed = [x.new.key for x in (*plan.regrants, *plan.updates)]
        self.elastic.applied(changed, now)
        in_flight = self._in_flight()
        settling = {r.alloc.node for r in records.values()
                    if r.alloc.live and (r.alloc.state != "running" or r.alloc.grant is None
                                         or r.alloc.job not in snap.jobs
                                         or r.key in in_flight)}
        settling |= {a.node for a in (*(p.alloc for p in plan.places),
                                      *(x.alloc for x in (*plan.stops, *plan.evictions)),
                                      *(y for x in (*plan.migrates, *plan.replaces)
                                        for y in (x.old, x.new)))}
        steady = [r.alloc for r in records.values()
                  if r.alloc.live and r.alloc.node not in settling]
        reading = self.usage.take()
        self._follow_pressure(snap, records, plan, reading, settling, now)
        if self._usage_wanted(snap, records):  # one read for the grants and the autoscaler
            self.usage.poll({r.alloc.node for r in records.values() if r.alloc.live})
        if reading is None or not steady or self.config.usage_interval <= 0:
            return
        if not reading.usage:  # nobody measured: every streak restarts, no sample moves a
            self.elastic.streaks.clear()  # grant (and no walk of every node: 5 s at 10,000)
            return
        decided = self.elastic.decide(snap.nodes, steady, reading)
        allocs = [d.alloc for d in decided]
        messages = {d.alloc.key: d.message for d in decided}
        self._dispatch("regrant", allocs, lambda items: self._regrant(items, snap),
                       partial(self._usage_regranted, messages=messages), snap, records,
                       report, now)

    def _follow_pressure(self, snap: Snapshot, records: dict[str, SlotRecord], plan: Plan,
                         reading: Reading | None, settling: set[str], now: float) -> None:
        """Shedding (service/shed.py): the plan's shed moves count against the bound, a new
        reading is a sample of each steady node, and what the next decision will shed with
        is published for `walle plan`. A node newly under sustained pressure wakes the loop
        for one more step (once per reading: a node with nowhere to shed to does not spin)."""
        self.shedder.moves_made(plan, now)
        if reading is not None and self.shedder.observe(
                snap.nodes, [r.alloc for r in records.values()], reading, settling):
            self.wake.set()
        pressure = self.shedder.pressure()
        note = None if pressure is None else pressure_to_json(pressure)
        if note is not None and note != self._published_pressure and self._publish_note(
                PRESSURE_KEY, note, "the nodes' pressure (walle plan sheds nothing)"):
            self._published_pressure = note

    def _usage_wanted(self, snap: Snapshot, records: Mapping[str, SlotRecord]) -> bool:
        """Usage is read while instances live and the grants follow it or a job scales on
        it."""
        return any(r.alloc.live for r in records.values()) and (
            self.config.usage_interval > 0 or self.autoscaler.wants_usage(snap))


    def _next_deadline(self, snap: Snapshot, records: dict[str, SlotRecord],
                       now: float) -> float | None:
        deadlines = []
        in_flight = self._in_flight()  # their batch's end wakes the loop: no deadline to keep
        for r in records.values():
            if r.key in in_flight:
                continue
            spec = snap.jobs.get(r.alloc.job)
            if spec and r.alloc.state == "pending":
                deadlines.append(r.state_since + spec.update.health_timeout + 0.1)
            if spec and r.alloc.state == "running" and r.critical_since is not None:
                deadlines.append(r.critical_since + FAILED_CHECK_GRACE + 0.1)
            if spec and spec.kind == "batch" and r.alloc.state == "running":
                deadlines.append(self._last_batch_probe + BATCH_PROBE + 0.1)
            if spec and _retry_at(r) > now:  # a failed slot's back-off ends
                deadlines.append(_retry_at(r) + 0.1)
        if self._unsettled:
            deadlines.append(self._last_settle + BATCH_PROBE + 0.1)
        if self._inspect_after:
            deadlines.append(min(self._inspect_after.values()) + 0.1)
        if (missing := self.adopter.next_deadline()) is not None:
            deadlines.append(missing)
        if (back_by := self.presence.next_deadline(now)) is not None:  # a leave grace ends
            deadlines.append(back_by)
        if self.reader.resync_deferred:  # it yielded to a failover: read everything now
            deadlines.append(now)
        if (measure_at := self.autoscaler.next_due()) is not None:
            deadlines.append(measure_at)
        if (usage_due := self.usage.next_due()) is not None and \
                self._usage_wanted(snap, records):  # the next reading
            deadlines.append(max(usage_due, now) + 0.1)
        return min(deadlines) if deadlines else None

    # ----- what the operator sees: states, reasons and events -------------------------------
    def _mark_slots(self, snap: Snapshot, records: dict[str, SlotRecord], plan: Plan,
                    report: StepReport, now: float) -> None:
        """Give every record its operator state and reason: `lost` while its node is down (or
        gone), and why the core cannot place it (this step's plan failures; a failed slot
        still backing off keeps its last one). Only records whose word changed are written."""
        for name, node in snap.nodes.items():
            if node.state != "down":
                self._down_since.pop(name, None)
        refused = refusals(plan)
        changed: dict[str, SlotRecord] = {}
        for key, r in records.items():
            if r.alloc.job not in snap.jobs or key in snap.blocked_slots:
                continue
            node = snap.nodes.get(r.alloc.node)
            state = "ready" if r.alloc.node in snap.away else node.state if node else None
            down = state in (None, "down")
            since = self._down_since.setdefault(r.alloc.node, now) if down else now
            why = r.refused if _retry_at(r) > now else refused.get(key, "")
            if why and r.alloc.live and not down:  # a move or an update that finds no room
                why = why if why.startswith("cannot move") else f"cannot move: {why}"
            if not down and r.status != "lost" and why == r.refused:
                continue  # the common case: nothing to say, nothing to build
            new = replace(with_node(r, state, since), refused=why)
            if new == r:
                continue
            changed[key] = records[key] = new
            before = snap.records.get(key)
            if new.status == "lost" and (before is None or before.status != "lost"):
                report.lost.append(key)
            if why and (before is None or why != before.refused):
                report.refused[key] = why
        self._write(changed, records=records)

    def _record_history(self, snap: Snapshot, records: dict[str, SlotRecord], plan: Plan,
                        report: StepReport, now: float) -> None:
        """Append the step's events to each job's history, with the slots that have no record
        and cannot be placed. Never breaks the step: a failure is logged."""
        try:
            events = step_events(report, plan, records, snap.jobs, now)
            refused = refusals(plan)
            evicted = {e.alloc.key: evicted_by(e.by, snap.jobs) for e in plan.evictions}
            with self.history.batch():  # one write for all jobs, not one per job
                for job in sorted(set(snap.jobs) | set(events)):
                    before = self.history.current(job)
                    spec = snap.jobs.get(job)
                    if spec is None:  # stopped: its story so far stays, nothing is unplaced
                        self.history.update(job, events[job], {}, before.count)
                        continue
                    unplaced = unplaced_slots(spec, records, snap.blocked_slots, refused,
                                              evicted, before)
                    self.history.update(job, scaled(spec, before, now) + events.get(job, [])
                                        + new_refusals(before, unplaced, now), unplaced,
                                        spec.count)
        except Exception as err:  # noqa: BLE001 - history must never break a step
            log.warning("could not record this step's events: %s", describe_error(err))

    # ----- one job's trouble stays its own -------------------------------------------------
    def _place(self, allocs: list[Allocation], snap: Snapshot) -> dict[str, Outcome]:
        """Place within the step (repairs, a new term's resumption): the step waits."""
        outcomes = self._run_place(allocs, snap)
        self._started.update((a.key, attempt_of(a)) for a in allocs
                             if (outcome := outcomes.get(a.key)) is not None and outcome.ok)
        return outcomes

    def _run_place(self, allocs: list[Allocation], snap: Snapshot,
                   replacing: Collection[str] = frozenset()) -> dict[str, Outcome]:
        """The executor's placement, isolated per job (no state of the leader changes: this
        may run beside the loop). `replacing`: keys whose new version replaces the instance
        running on the same node (it leaves the pool and drains before the restart)."""
        return self._per_job("place",
                             lambda items: self.executor.place(items, snap.addresses, replacing),
                             [(a, snap.jobs[a.job]) for a in allocs], lambda item: item[0].job,
                             failed_outcomes(lambda item: item[0].key))

    def _regrant(self, allocs: list[Allocation], snap: Snapshot) -> dict[str, Outcome]:
        return self._per_job("regrant", self.executor.regrant,
                             [(a, snap.jobs[a.job]) for a in allocs],
                             lambda item: item[0].job, failed_outcomes(lambda item: item[0].key))

    def _stop(self, allocs: list[Allocation], snap: Snapshot) -> dict[str, Outcome]:
        """Stop allocs; each drains first for its job's stop.drain (docs/lb.md)."""
        return self._per_job("stop", lambda items: self.executor.stop(items, snap.jobs), allocs,
                             lambda a: a.job, failed_outcomes(lambda a: a.key))

    def _per_job(self, what: str, call: Callable[[list[T]], dict[Any, Any]], items: list[T],
                 job_of: Callable[[T], str],
                 on_error: Callable[[list[T], str], dict[Any, Any]] | None = None
                 ) -> dict[Any, Any]:
        """Run one executor call for all items (one playbook run). If it raises, find whom
        it raises for: once per job, then, within a job that still raises, once per item (a
        node of its own). So an exception caused by one job or node (a spec the parameters
        refuse, a node without an address, a bug) fails only the items it concerns:
        `on_error(items, reason)` answers for them."""
        if not items:
            return {}
        try:
            return call(items)
        except ConsulError:
            raise
        except Exception as err:  # noqa: BLE001 - isolated just below
            return self._isolate(what, call, items, job_of, on_error, err)

    def _isolate(self, what: str, call: Callable[[list[T]], dict[Any, Any]], items: list[T],
                 job_of: Callable[[T], str],
                 on_error: Callable[[list[T], str], dict[Any, Any]] | None,
                 err: Exception) -> dict[Any, Any]:
        """`call(items)` raised `err`: split by job (or, for one job, item by item) and retry
        each part; a single item that raises is failed."""
        if len(items) == 1:
            return self._job_failed(what, job_of(items[0]), items, err, on_error)
        by_job: dict[str, list[T]] = defaultdict(list)
        for item in items:
            by_job[job_of(item)].append(item)
        parts = list(by_job.values()) if len(by_job) > 1 else [[item] for item in items]
        out: dict[Any, Any] = {}
        for part in parts:
            try:
                out.update(call(part))
            except ConsulError:
                raise
            except Exception as part_err:  # noqa: BLE001 - narrow it down further
                out.update(self._isolate(what, call, part, job_of, on_error, part_err))
        return out

    def _job_failed(self, what: str, job: str, items: list[T], err: Exception,
                    on_error: Callable[[list[T], str], dict[Any, Any]] | None
                    ) -> dict[Any, Any]:
        reason = f"{what}: {describe_error(err)}"
        self._note(job, reason, exc=err)
        return on_error(items, reason) if on_error else {}

    @contextmanager
    def _slot_guard(self, key: str, what: str, record: SlotRecord,
                    changed: dict[str, SlotRecord], records: dict[str, SlotRecord],
                    report: StepReport, now: float) -> Iterator[None]:
        """Handle one slot: an exception (other than Consul's, which concern every job) marks
        the slot failed with the reason and the step goes on with the others."""
        try:
            yield
        except ConsulError:
            raise
        except Exception as err:  # noqa: BLE001 - one slot's trouble
            reason = f"{what}: {describe_error(err)}"
            self._note(key, reason, exc=err)
            changed[key] = records[key] = record.failed(reason, now)
            report.failed[key] = reason

    def _note(self, key: str, reason: str, exc: Exception | None = None) -> None:
        """Log a job's or slot's trouble once per distinct reason (with the traceback of an
        unexpected exception), not at every step."""
        if (key, reason) in self._reported:
            return
        if len(self._reported) > 10_000:  # a long-lived leader: forget, do not grow forever
            self._reported.clear()
        self._reported.add((key, reason))
        log.error("%s: %s", key, reason, exc_info=exc if not isinstance(exc, SpecError)
                  else None)

    def _report_unreadable(self, snap: Snapshot) -> None:
        for key, reason in snap.unreadable:
            if (key, reason) not in self._reported:
                self._reported.add((key, reason))
                log.warning("skipping unreadable record %s (fix or delete it; Walle leaves "
                            "it and what it names alone): %s", key, reason)

    # ----- guarded writes -------------------------------------------------------------------
    def _write(self, put: dict[str, SlotRecord], delete: Iterable[SlotRecord] = (),
               records: dict[str, SlotRecord] | None = None,
               consumed: Iterable[BatchCommit] = ()) -> None:
        """Write records (CAS + leader guard), then refresh their ModifyIndex in `records` so
        later writes in the same step compare against what is stored now. `consumed` batch
        commits are deleted in the same transaction."""
        delete, consumed = list(delete), list(consumed)
        if not put and not delete and not consumed:
            return
        session = self.lock.session_id
        if not self.lock.is_leader or not session:
            raise LostLeadership("not the leader: refusing to write state")
        try:
            result = self.store.write_allocs([to_stored(r) for r in put.values()],
                                             [to_stored(r) for r in delete], session=session,
                                             consumed=consumed)
        except BaseException:  # applied in part, or not at all: read it all again
            self.reader.forget()
            raise
        if result.lost_leadership:
            raise LostLeadership("the leader lock is held by another session")
        if not result.ok:  # a CAS lost: someone else wrote; the next step re-reads
            self.reader.forget()
            raise ConsulError(f"state write conflicted: {result.errors}")
        written = {}
        for key, record in put.items():
            index = result.indexes.get(alloc_key(record.alloc.job, record.alloc.slot))
            if index is not None:
                written[key] = replace(record, modify_index=index)
        if records is not None:
            records.update(written)
        self.reader.wrote(written.values(), result.indexes, deleted=bool(delete))


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



def _failed(a: Allocation) -> Allocation:
    return replace(a, state="failed")


def _new_record(current: SlotRecord | None, alloc: Allocation, previous: Allocation | None,
                now: float, reason: str = "") -> SlotRecord:
    index = current.modify_index if current else 0
    return SlotRecord(alloc=alloc, previous=previous, modify_index=index, state_since=now,
                      reason=reason)
