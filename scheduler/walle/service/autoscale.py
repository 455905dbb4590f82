"""The leader's autoscaler: measure each service that has `scaling`, let the policy
(core/autoscale.py) choose its count, write it like `walle scale` (a validated spec, CAS), and
tell the job's events why, with the measured value.

Measurements:
- cpu / memory: the mean use of the job's running instances in percent of their
  resources.cpu.max / memory.max (cpu_percent, memory_bytes), from the leader's latest usage
  reading: the one the usage-driven grants sample too (service/elastic.py UsagePoller, each
  node's walle-exporter /summary read in the background once per interval), so autoscaling
  costs no read of its own and never waits on a node in the step. An instance that became
  running after the reading began is not expected in it; while no running instance is, there
  is nothing to measure yet;
- prometheus: the job's query through Prometheus's HTTP API (`GET /api/v1/query`) at the
  scheduler's --prometheus-addr; it must give one number (a scalar, or a vector of one
  sample), read as the figure per instance.
A measurement that fails (no Prometheus address, an unreachable or refusing Prometheus, a
query of several series, no instance measured) keeps the count and is one `autoscale failed`
event per distinct reason. Nothing here raises into the step: each job's trouble is its own,
and every call is bounded by QUERY_TIMEOUT.

Jobs are measured every `interval` seconds (the step wakes for it), and again when a
cooldown that held a fall back ends. When the count last changed is read from the job's own
events (`autoscaled` and `scaled`, the latter for `walle scale` too), so a new leader keeps
the cooldown its predecessor started.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from walle.adapters.consul import ConsulApi, StateStore
from walle.core.autoscale import decide_count
from walle.jobspec import JobSpec
from walle.service import jobs
from walle.service.cluster import Snapshot
from walle.service.elastic import Reading
from walle.service.history import HistoryWriter, SlotEvent

log = logging.getLogger("walle.scheduler")

DEFAULT_INTERVAL = 15.0
QUERY_TIMEOUT = 5.0
CHANGE_EVENTS = ("autoscaled", "scaled")


class MetricError(Exception):
    """A measurement that could not be made; the message says why."""


class Autoscaler:
    def __init__(self, api: ConsulApi, store: StateStore, history: HistoryWriter, *,
                 prometheus: str | None = None, interval: float = DEFAULT_INTERVAL,
                 latest_usage: Callable[[], Reading | None] = lambda: None,
                 query: Callable[[str, str], float] | None = None):
        self.api, self.store, self.history = api, store, history
        self.prometheus = prometheus
        self.interval = interval
        self._latest_usage = latest_usage  # the leader's UsagePoller.latest
        self._query = query  # None: Prometheus's HTTP API (prometheus_value)
        self._due = float("-inf")
        self._failing: dict[str, str] = {}  # job -> the reason already told in its events

    def next_due(self) -> float | None:
        return self._due if math.isfinite(self._due) else None

    def wants_usage(self, snap: Snapshot) -> bool:
        """Whether a job scales on cpu or memory (the leader then reads usage for it)."""
        return any(spec.scaling is not None and spec.kind == "service"
                   and spec.scaling.metric != "prometheus" for spec in snap.jobs.values())

    def run(self, snap: Snapshot, now: float) -> None:
        """Measure and scale every job that has `scaling`, if due. Never raises."""
        scaled = sorted(name for name, spec in snap.jobs.items()
                        if spec.scaling is not None and spec.kind == "service")
        if not scaled:
            self._due = float("-inf")
            return
        if now < self._due:
            return
        self._due = now + self.interval
        reading = self._latest_usage()
        for name in scaled:
            spec = snap.jobs[name]
            try:
                self._scale_one(spec, snap, reading, now)
            except MetricError as err:
                self._tell_failure(name, str(err), now)
            except Exception as err:  # noqa: BLE001 - one job's trouble stays its own
                log.warning("autoscaling %s: %s", name, err)
                self._tell_failure(name, f"{type(err).__name__}: {err}", now)

    def _scale_one(self, spec: JobSpec, snap: Snapshot, reading: Reading | None,
                   now: float) -> None:
        scaling = spec.scaling
        value = self.measure(spec, snap, reading)
        if value is None:  # no instance runs yet: nothing to measure, nothing wrong
            return
        self._failing.pop(spec.name, None)
        before = self.history.current(spec.name)
        changes = [e.time for e in before.events if e.event in CHANGE_EVENTS]
        decision = decide_count(scaling, spec.count, value, max(changes, default=None), now)
        if decision.wait_until is not None:
            self._due = min(self._due, decision.wait_until + 0.1)
        if decision.count == spec.count:
            return
        jobs.scale(self.store, spec.name, decision.count)
        message = (f"count {spec.count} -> {decision.count}: {describe(spec)} = "
                   f"{value:.4g}, target {scaling.target:g} ({decision.why})")
        log.info("autoscaled %s: %s", spec.name, message)
        self.history.update(spec.name, [SlotEvent(now, "autoscaled", message)],
                            before.unplaced, before.count)

    def measure(self, spec: JobSpec, snap: Snapshot, reading: Reading | None) -> float | None:
        scaling = spec.scaling
        if scaling.metric == "prometheus":
            if not self.prometheus:
                raise MetricError("no Prometheus address: start the scheduler with "
                                  "--prometheus-addr URL")
            return (self._query or prometheus_value)(self.prometheus, scaling.query or "")
        return mean_use(spec, snap, reading)

    def _tell_failure(self, job: str, reason: str, now: float) -> None:
        """One `autoscale failed` event per distinct reason; the count stays."""
        if self._failing.get(job) == reason:
            return
        self._failing[job] = reason
        log.warning("cannot autoscale %s: %s", job, reason)
        before = self.history.current(job)
        self.history.update(job, [SlotEvent(now, "autoscale failed",
                                            f"{reason}; the count stays")],
                            before.unplaced, before.count)


def describe(spec: JobSpec) -> str:
    scaling = spec.scaling
    if scaling.metric == "prometheus":
        return f"prometheus {scaling.query!r}"
    return f"{scaling.metric} % of resources.{scaling.metric} max"


def mean_use(spec: JobSpec, snap: Snapshot, reading: Reading | None) -> float | None:
    """The mean use of the job's running instances in percent of their maximum (None while
    none runs, or none ran when the latest reading began)."""
    field, ceiling = {"cpu": ("cpu_percent", spec.resources.cpu.max * 100.0),
                      "memory": ("memory_bytes", spec.resources.memory.max)}[spec.scaling.metric]
    running = [r for r in snap.records.values()
               if r.alloc.job == spec.name and r.alloc.state == "running"]
    if reading is None or not any(r.state_since < reading.started for r in running):
        return None
    usage = reading.usage
    values = [usage.get((r.alloc.node, r.alloc.key), {}).get(field) for r in running]
    measured = [float(v) for v in values
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if not measured:
        raise MetricError(f"no {spec.scaling.metric} measurement from walle-exporter for "
                          f"any of its {len(running)} running instance(s)")
    return 100.0 * (sum(measured) / len(measured)) / ceiling


def prometheus_value(addr: str, query: str) -> float:
    """One number from Prometheus's instant query API; MetricError says why not."""
    url = f"{addr.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(url, timeout=QUERY_TIMEOUT) as answer:  # noqa: S310
            body = json.load(answer)
    except urllib.error.HTTPError as err:
        raise MetricError(f"Prometheus refused the query ({err.code}: "
                          f"{_error_of(err)})") from None
    except (OSError, ValueError) as err:
        raise MetricError(f"Prometheus at {addr} did not answer ({err})") from None
    return _one_number(body)


def _error_of(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(err).get("error", ""))[:300]
    except (OSError, ValueError, AttributeError):
        return err.reason


def _one_number(body: Any) -> float:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or body.get("status") != "success":
        raise MetricError(f"Prometheus answered {str(body)[:200]!r}, not a query result")
    result = data.get("result")
    try:
        if data.get("resultType") == "scalar":
            value = float(result[1])
        elif data.get("resultType") == "vector" and isinstance(result, list):
            if len(result) != 1:
                raise MetricError(f"the query gave {len(result)} series; it must give one "
                                  "number (wrap it in sum() or avg())")
            value = float(result[0]["value"][1])
        else:
            raise MetricError(f"the query gave a {data.get('resultType')}; it must give one "
                              "number (a scalar or a single series)")
    except (TypeError, KeyError, IndexError, ValueError) as err:
        raise MetricError(f"Prometheus's answer has no number ({err})") from None
    if not math.isfinite(value) or value < 0:
        raise MetricError(f"the query gave {value}; the count follows finite values >= 0")
    return value

