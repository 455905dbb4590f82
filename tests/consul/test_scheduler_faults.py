"""The loop survives any one job's trouble (issue 9, items 2 and 11): an exception while
handling one job or slot marks that job's slots failed with the reason, the others are still
scheduled, a failing slot is retried with back-off (not at every step), a scheduler taking over
does not crash on it, and the loop's watches outlive failed calls. Fresh stand-in per test;
the playbooks are replaced by test_scheduler_service's recording executor."""

from __future__ import annotations

import json
import threading
import time

import pytest
import test_scheduler_service
from test_scheduler_service import (  # the recording executor and a fresh 3-node stand-in
    Clock,
    RecordingExecutor,
    records,
    web_spec,
)

import walle.service.decide as decide_module
from walle.adapters.consul import ConsulUnreachable, StateStore
from walle.jobspec import parse_spec
from walle.jobspec.encoding import spec_to_data
from walle.service import jobs
from walle.service.scheduler import Scheduler, SchedulerConfig, StepReport

pytestmark = pytest.mark.consul

cluster = test_scheduler_service.cluster  # the fixture: a fresh stand-in with 3 nodes

SCRIPT_ERROR = "health.type: 'script' checks are not supported by this node"


class FaultyExecutor(RecordingExecutor):
    """Raises (as a parameter builder or a playbook runner bug would) in `method` for any
    batch that holds an instance of a job in `bad`."""

    def __init__(self, api, method: str, bad: set[str]):
        super().__init__(api)
        self.method, self.bad = method, set(bad)  # job or node names
        self.raised = 0
        self.tried: list[str] = []  # instance keys handed to place(), raised or not

    def _check(self, method: str, jobs) -> None:
        if method == self.method and self.bad & set(jobs):
            self.raised += 1
            raise ValueError(SCRIPT_ERROR)

    def place(self, items, addresses, replacing=()):
        items = list(items)
        self.tried += [a.key for a, _ in items]
        self._check("place", [a.job for a, _ in items] + [a.node for a, _ in items])
        return super().place(items, addresses, replacing)

    def stop(self, allocs, jobs=None):
        allocs = list(allocs)
        self._check("stop", [a.job for a in allocs])
        return super().stop(allocs, jobs)

    def probe_units(self, units):
        units = list(units)
        self._check("probe", [unit.split("-")[1] for _, unit in units])
        return super().probe_units(units)


def scheduler(api, clock, executor, name="s1", acquire=True, **config) -> Scheduler:
    s = Scheduler(api, SchedulerConfig(name=name, inventory="unused", lock_delay=0, seed=7,
                                       **config), executor=executor, clock=clock)
    if acquire:
        assert s.lock.acquire()
    return s


def api_spec(count=1):
    return web_spec(count=count, name="api", service={"port": 9090})


def placements(executor, key):
    return executor.tried.count(key)


def test_an_exception_placing_one_job_fails_only_that_job(cluster):
    clock = Clock()
    ex = FaultyExecutor(cluster, "place", {"api"})
    s = scheduler(cluster, clock, ex)
    store = StateStore(cluster)
    store.put_job(web_spec(count=2), 0)
    store.put_job(api_spec(), 0)

    report = s.step()  # must not raise
    assert "api-0" in report.failed and SCRIPT_ERROR in report.failed["api-0"]
    s.step()
    stored = records(cluster)
    assert {k: stored[k].state for k in ("web-0", "web-1")} == {"web-0": "running",
                                                                 "web-1": "running"}
    assert stored["api-0"].state == "failed"
    assert SCRIPT_ERROR in stored["api-0"].extra["reason"]  # the reason is in its record

    # retried with back-off, not at every step
    tries = placements(ex, "api-0")
    for _ in range(3):
        s.step()
    assert placements(ex, "api-0") == tries
    clock.now += 300
    s.step()
    assert placements(ex, "api-0") == tries + 1

    # the loop still serves later changes
    store.put_job(web_spec(count=1, name="cache", service={"port": 7070}), 0)
    s.step()
    s.step()
    assert records(cluster)["cache-0"].state == "running"
    s.lock.step_down()

    # a scheduler taking over does not crash on the bad job either
    ex2 = FaultyExecutor(cluster, "place", {"api"})
    s2 = scheduler(cluster, clock, ex2, name="s2")
    s2.step()
    s2.step()
    assert {k: a.state for k, a in records(cluster).items() if not k.startswith("api")} == {
        "web-0": "running", "web-1": "running", "cache-0": "running"}
    assert all(k.startswith("api") for k, _ in ex2.placed)  # nothing healthy placed again
    s2.lock.step_down()


def test_an_exception_placing_on_one_node_fails_only_the_instance_there(cluster):
    clock = Clock()
    ex = FaultyExecutor(cluster, "place", {"node2"})
    s = scheduler(cluster, clock, ex)
    StateStore(cluster).put_job(web_spec(count=3), 0)
    report = s.step()
    (failed,) = report.failed  # one instance per node (spread): only node2's fails
    assert SCRIPT_ERROR in report.failed[failed]
    assert sorted(report.placed) == sorted(f"{k}@{n}" for k, n in ex.placed)
    assert len(report.placed) == 2 and all(not p.endswith("@node2") for p in report.placed)
    s.lock.step_down()


def test_a_pending_bad_job_left_by_a_crashed_leader_does_not_crash_the_next(cluster):
    """The issue's report: the record is already `pending` when the first leader dies, so
    every scheduler that takes over resumes it first."""
    clock = Clock()
    store = StateStore(cluster)
    store.put_job(api_spec(), 0)
    s1 = scheduler(cluster, clock, RecordingExecutor(cluster))
    s1.executor.health = "critical"
    s1.step()  # api-0 is written pending and "placed" but never passes
    assert records(cluster)["api-0"].state == "pending"
    s1.lock.step_down()
    store.put_job(web_spec(count=2), 0)
    ex2 = FaultyExecutor(cluster, "place", {"api"})
    s2 = scheduler(cluster, clock, ex2, name="s2")
    s2.step()
    s2.step()
    stored = records(cluster)
    assert stored["api-0"].state == "failed" and SCRIPT_ERROR in stored["api-0"].extra["reason"]
    assert stored["web-0"].state == stored["web-1"].state == "running"
    s2.lock.step_down()


def test_a_pending_slot_scaled_away_before_a_new_leader_is_stopped_not_placed_again(cluster):
    """Chaos (2026-12-02, leader-kill): api-1 was pending when its leader died, and the job
    was scaled to 1 before the next took office; the new leader's resumption placed api-1
    again, which the parameters refuse (slot outside the job), so the slot was failed and
    held for its back-off instead of stopped."""
    clock = Clock()
    store = StateStore(cluster)
    store.put_job(api_spec(count=2), 0)
    s1 = scheduler(cluster, clock, RecordingExecutor(cluster))
    s1.executor.health = "critical"
    s1.step()  # api-0 and api-1 are written pending and "placed" but never pass
    assert records(cluster)["api-1"].state == "pending"
    s1.lock.step_down()
    jobs.scale(store, "api", 1)
    ex2 = RecordingExecutor(cluster)
    s2 = scheduler(cluster, clock, ex2, name="s2")
    s2.step()
    s2.step()
    assert [k for k, _ in ex2.placed] == ["api-0"]  # resumed; api-1 is not the job's any more
    assert "api-1" not in records(cluster)  # stopped by the plan, as any slot scaled away
    s2.lock.step_down()


def test_an_exception_stopping_one_job_leaves_the_others_stopping(cluster):
    clock = Clock()
    ex = FaultyExecutor(cluster, "none", {"api"})
    s = scheduler(cluster, clock, ex)
    store = StateStore(cluster)
    store.put_job(web_spec(count=2), 0)
    store.put_job(api_spec(), 0)
    s.step()
    s.step()
    ex.method = "stop"
    for name in ("web", "api"):
        assert store.delete_job(name, store.job(name).modify_index)
    report = s.step()
    assert sorted(records(cluster)) == ["api-0"]  # web is gone; api's instance still runs
    assert SCRIPT_ERROR in report.failed["api-0"]
    ex.method = "none"  # the fault clears: the next step finishes the job
    s.step()
    assert records(cluster) == {}
    s.lock.step_down()


def test_a_rollback_that_cannot_parse_the_previous_spec_fails_only_its_slot(cluster):
    clock = Clock()
    ex = RecordingExecutor(cluster)
    s = scheduler(cluster, clock, ex)
    store = StateStore(cluster)
    store.put_job(web_spec(count=1), 0)
    s.step()
    s.step()
    bad = web_spec(count=1, args=("-m", "http.server", "9999"))
    # the kept previous version was written by an older Walle: it no longer validates
    previous = {"version": "old", "spec": {"name": "web", "kind": "daemon"}}
    cluster.client.kv.put("walle/jobs/web", json.dumps(
        {"version": bad.digest(), "spec": spec_to_data(bad), "previous": previous}))
    ex.health = "critical"
    s.step()  # the new version replaces web-0 and never passes
    store.put_job(api_spec(), 0)
    ex.health = "passing"
    clock.now += 6  # past the 5 s health timeout: fail, then try to roll back
    report = s.step()
    assert report.rolled_back == []
    assert "health" in report.failed["web-0"] and "cannot roll back" in report.failed["web-0"]
    s.step()
    assert records(cluster)["api-0"].state == "running"
    s.lock.step_down()


def test_one_jobs_probe_failing_does_not_stop_the_others_finishing(cluster):
    clock = Clock()
    ex = FaultyExecutor(cluster, "probe", {"bad"})
    s = scheduler(cluster, clock, ex)
    for name in ("etl", "bad"):
        StateStore(cluster).put_job(parse_spec({
            "name": name, "kind": "batch", "count": 1, "resources": {"cpu": 0.1,
                                                                     "memory": "16M"},
            "runtime": {"command": "/bin/true"}}), 0)
    s.step()
    s.step()
    done = {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    ex.units = {"walle-etl-0.service": done, "walle-bad-0.service": done}
    clock.now += 6
    report = s.step()
    assert report.finished == ["etl-0"]
    assert records(cluster)["bad-0"].state == "running"  # unknown: asked again later
    s.lock.step_down()


# ----- the service loop itself (threads, real clock) ----------------------------------------
def run(s: Scheduler) -> threading.Thread:
    thread = threading.Thread(target=s.run_forever, daemon=True, name=f"test-{s.config.name}")
    thread.start()
    return thread


def states(api) -> dict[str, str]:
    return {k: a.state for k, a in records(api).items()}


def test_the_service_loop_survives_a_bad_job_and_a_takeover(cluster, wait_until):
    store = StateStore(cluster)
    store.put_job(api_spec(), 0)
    store.put_job(web_spec(count=2), 0)
    s1 = scheduler(cluster, time.time, FaultyExecutor(cluster, "place", {"api"}),
                   acquire=False, resync=300.0)
    t1 = run(s1)
    try:
        wait_until(lambda: states(cluster).get("web-1") == "running"
                   and states(cluster).get("web-0") == "running", 20)
        wait_until(lambda: states(cluster).get("api-0") == "failed", 10)
        store.put_job(web_spec(count=1, name="cache", service={"port": 7070}), 0)
        wait_until(lambda: states(cluster).get("cache-0") == "running", 20)
        assert t1.is_alive() and s1.lock.is_leader
    finally:
        s1.stop()
        t1.join(timeout=70)
    s2 = scheduler(cluster, time.time, FaultyExecutor(cluster, "place", {"api"}),
                   name="s2", acquire=False, resync=300.0)
    t2 = run(s2)
    try:
        wait_until(lambda: s2.lock.is_leader, 20)
        store.put_job(web_spec(count=1, name="queue", service={"port": 6060}), 0)
        wait_until(lambda: states(cluster).get("queue-0") == "running", 20)
        assert t2.is_alive()
    finally:
        s2.stop()
        t2.join(timeout=70)


def test_the_jobs_watch_outlives_failed_calls(cluster, wait_until):
    """With the resync at 300 s only the jobs watch can bring a new job in quickly: after its
    blocking call fails three times it must still fire."""
    store = StateStore(cluster)
    s = scheduler(cluster, time.time, RecordingExecutor(cluster), acquire=False,
                  resync=300.0)
    failures = {"left": 0}
    real_jobs = s.store.jobs

    def flaky_jobs(index=0, wait=None, unreadable=None):
        if wait is not None and failures["left"] > 0:
            failures["left"] -= 1
            raise ConsulUnreachable(cluster.address, "read jobs", 6, 31.0, "long poll closed")
        return real_jobs(index, wait, unreadable)

    s.store.jobs = flaky_jobs
    thread = run(s)
    try:
        wait_until(lambda: s.lock.is_leader, 20)
        failures["left"] = 3  # the blocking call in flight returns with the next change...
        store.put_job(web_spec(count=1), 0)
        wait_until(lambda: states(cluster).get("web-0") == "running", 20)
        wait_until(lambda: failures["left"] == 0, 20)  # ...then the next three calls fail
        store.put_job(web_spec(count=1, name="cache", service={"port": 7070}), 0)
        wait_until(lambda: states(cluster).get("cache-0") == "running", 15)
    finally:
        s.stop()
        thread.join(timeout=70)


def test_a_job_the_core_cannot_plan_is_set_aside_and_keeps_its_instances(cluster,
                                                                         monkeypatch):
    clock = Clock()
    ex = RecordingExecutor(cluster)
    s = scheduler(cluster, clock, ex)
    store = StateStore(cluster)
    store.put_job(web_spec(count=1), 0)
    store.put_job(api_spec(count=2), 0)
    s.step()
    s.step()
    real = decide_module.reconcile  # the leader decides in walle.service.decide

    def core_with_a_bug(jobs, allocs, nodes, **kw):
        if "api" in jobs:
            raise ZeroDivisionError("a core bug that only api's spec reaches")
        return real(jobs, allocs, nodes, **kw)

    monkeypatch.setattr(decide_module, "reconcile", core_with_a_bug)
    store.put_job(web_spec(count=3), store.job("web").modify_index)
    s.step()
    s.step()
    assert ex.stopped == []  # api is set aside, not stopped as if it were gone
    assert states(cluster) == {"web-0": "running", "web-1": "running", "web-2": "running",
                               "api-0": "running", "api-1": "running"}
    s.lock.step_down()


def test_an_unexpected_error_in_a_step_does_not_end_the_loop(cluster):
    s = scheduler(cluster, Clock(), RecordingExecutor(cluster))
    calls = []

    def step():
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("a bug outside any job")
        s.stop()
        return StepReport()

    s.step = step
    s._lead()  # returns only because the second step stops it
    assert calls == [0, 1]
    s.lock.step_down()
