"""A leader that never waits on one playbook (issue 15, item 2): batches run beside the loop,
a bounded number at once, one at a time per node, and the loop keeps reading state and deciding
while they run. The real service loop (threads, real clock) against a fresh stand-in, with
test_scheduler_service's recording executor made slow where a test says so: a stop on a
"slow" node blocks until the test releases it (a 30 s stop timeout, a dying node).

Layout: `hog` is pinned to node1 (the slow node), `web` (2 instances, a fixed port) to two of
node2, node3 and node4; when one of them dies, its web instance can only go to the third.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import pytest
import test_scheduler_service
from test_scheduler_service import RecordingExecutor, records, register_node, web_spec

from walle.adapters.consul import StateStore
from walle.cli.main import main
from walle.service import jobs
from walle.service.history import from_data
from walle.service.scheduler import Scheduler, SchedulerConfig

pytestmark = pytest.mark.consul

cluster = test_scheduler_service.cluster  # the fixture: a fresh stand-in with 3 nodes

HELD = 120.0  # a slow stop gives up waiting for its release after this (a safety net only)


class SlowExecutor(RecordingExecutor):
    """Stops on `slow_nodes` block until `release` is set. `began`/`ended`: when the call that
    handled each instance began and ended; `overlaps` lists nodes that ever had two calls at
    once, `peak` the most calls at once."""

    def __init__(self, api, slow_nodes: set[str]):
        super().__init__(api)
        self.slow_nodes = set(slow_nodes)
        self.slow_places: set[str] = set()  # placements on these nodes block too
        self.release = threading.Event()
        self.held = threading.Event()  # a slow stop is waiting for its release
        self.began: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.overlaps: set[str] = set()
        self.peak = 0
        self._busy: dict[str, int] = {}
        self._running = 0
        self._mutex = threading.Lock()

    @contextmanager
    def _call(self, keys: list[str], nodes: set[str]):
        with self._mutex:
            self._running += 1
            self.peak = max(self.peak, self._running)
            for node in nodes:
                self._busy[node] = self._busy.get(node, 0) + 1
                if self._busy[node] > 1:
                    self.overlaps.add(node)
        self.began.update(dict.fromkeys(keys, time.monotonic()))
        try:
            yield
        finally:
            with self._mutex:
                self._running -= 1
                for node in nodes:
                    self._busy[node] -= 1
                self.ended.update(dict.fromkeys(keys, time.monotonic()))

    def stop(self, allocs, jobs=None):
        allocs = list(allocs)
        nodes = {a.node for a in allocs}
        with self._call([a.key for a in allocs], nodes):
            if nodes & self.slow_nodes:
                self.held.set()
                self.release.wait(HELD)
            return super().stop(allocs)

    def place(self, items, addresses, replacing=()):
        items = list(items)
        nodes = {a.node for a, _ in items}
        with self._call([a.key for a, _ in items], nodes):
            if nodes & self.slow_places:
                self.held.set()
                self.release.wait(HELD)
            return super().place(items, addresses)

    def regrant(self, items):
        items = list(items)
        with self._call([a.key for a, _ in items], {a.node for a, _ in items}):
            return super().regrant(items)


def pinned(name: str, node: str, count: int = 1, port: int = 7070, op: str = "eq", **extra):
    return web_spec(count=count, name=name, service={"port": port}, cpu="1",
                    constraints=[{"attribute": "name", "operator": op, "value": node}], **extra)


def start(api, executor, name: str = "s1", **config) -> tuple[Scheduler, threading.Thread]:
    config = {"resync": 300.0, "node_down_grace": 0.0, "max_inflight_batches": 4, **config}
    s = Scheduler(api, SchedulerConfig(name=name, inventory="unused", lock_delay=0, seed=7,
                                       **config), executor=executor)
    thread = threading.Thread(target=s.run_forever, daemon=True, name=f"test-{name}")
    thread.start()
    return s, thread


def events(api, job: str) -> list:
    _, stored = StateStore(api).events(job)
    return list(from_data(stored[job][0]).events) if job in stored else []


def states(api) -> dict[str, tuple[str, str]]:
    return {k: (a.state, a.node) for k, a in records(api).items()}


@pytest.fixture
def hog_and_web(cluster, wait_until):
    """hog-0 running on node1, web-0/web-1 on node2 and node3; stops on node1 are slow. Yields
    (api, executor, start(**config)); the loop is stopped and the stop released at the end."""
    register_node(cluster, "node4", "10.77.250.14", zone="z1")
    store = StateStore(cluster)
    assert store.put_job(pinned("hog", "node1"), 0)
    assert store.put_job(web_spec(count=2, constraints=[
        {"attribute": "name", "operator": "ne", "value": "node1"}]), 0)
    ex = SlowExecutor(cluster, {"node1"})
    started: list[tuple[Scheduler, threading.Thread]] = []

    def begin(**config) -> Scheduler:
        started.append(start(cluster, ex, **config))
        wait_until(lambda: {k: s for k, (s, _) in states(cluster).items()}
                   == {"hog-0": "running", "web-0": "running", "web-1": "running"}, 30)
        return started[-1][0]

    try:
        yield cluster, ex, begin
    finally:
        ex.release.set()
        for s, thread in started:
            s.stop()
            thread.join(timeout=70)


def web_nodes(api) -> tuple[str, str, str]:
    """(a web instance, its node, the node of none)."""
    where = {n: k for k, (_, n) in states(api).items() if k.startswith("web-")}
    spare = ({"node2", "node3", "node4"} - set(where)).pop()
    node = min(where)
    return where[node], node, spare


def test_a_slow_stop_on_one_node_does_not_delay_the_failover_of_another(hog_and_web,
                                                                        wait_until):
    api, ex, begin = hog_and_web
    begin()
    lost, node, spare = web_nodes(api)
    jobs.scale(StateStore(api), "hog", 0)  # stop hog-0 on node1: that stop hangs
    wait_until(ex.held.is_set, 30)
    register_node(api, node, "10.77.250.99", status="critical")  # it dies
    # re-planned onto the spare node and started there while node1's stop still runs
    wait_until(lambda: (lost, spare) in ex.placed, 60)
    wait_until(lambda: states(api).get(lost) == ("running", spare), 30)
    assert not ex.release.is_set() and "hog-0" in states(api)  # the stop has not ended
    # the events say it moved, then ran: worded by the step that decided, in order (the
    # history is written at the end of the step that wrote the record: wait for it)
    def story() -> list[str]:
        return [e.event for e in events(api, "web") if f"web-{e.slot}" == lost
                and e.event in ("placed", "moved", "running")]

    wait_until(lambda: story()[-2:] == ["moved", "running"], 10)
    ex.release.set()
    # its end wakes the loop at once (the resync is 300 s): the record goes
    wait_until(lambda: "hog-0" not in states(api), 30)
    assert not ex.overlaps


def test_a_later_batch_for_a_node_waits_for_the_one_it_runs(hog_and_web, wait_until):
    """cache is pinned to node1 while hog-0's stop hangs there: its intent is written (the loop
    decided), but its placement starts only once the stop has ended."""
    api, ex, begin = hog_and_web
    begin()
    jobs.scale(StateStore(api), "hog", 0)
    wait_until(ex.held.is_set, 30)
    assert StateStore(api).put_job(pinned("cache", "node1", port=6060), 0)
    wait_until(lambda: states(api).get("cache-0") == ("pending", "node1"), 30)
    time.sleep(1.0)  # room for a placement that would not wait
    assert ("cache-0", "node1") not in ex.placed
    ex.release.set()
    wait_until(lambda: states(api).get("cache-0") == ("running", "node1"), 30)
    assert ex.began["cache-0"] >= ex.ended["hog-0"]
    assert not ex.overlaps


def test_no_more_batches_run_at_once_than_the_bound(hog_and_web, wait_until):
    """With one batch at a time, a failover waits for node1's stop: decided and written as
    intent, not started."""
    api, ex, begin = hog_and_web
    begin(max_inflight_batches=1)
    lost, node, spare = web_nodes(api)
    jobs.scale(StateStore(api), "hog", 0)
    wait_until(ex.held.is_set, 30)
    register_node(api, node, "10.77.250.99", status="critical")
    wait_until(lambda: states(api).get(lost) == ("pending", spare), 30)
    time.sleep(1.0)
    assert (lost, spare) not in ex.placed
    ex.release.set()
    wait_until(lambda: states(api).get(lost) == ("running", spare), 30)
    assert ex.peak == 1


def test_a_leader_that_loses_the_lock_while_a_batch_runs_writes_nothing_after(hog_and_web,
                                                                             wait_until):
    """...and starts nothing more: a batch still queued behind the running one is dropped."""
    api, ex, begin = hog_and_web
    s1 = begin()
    jobs.scale(StateStore(api), "hog", 0)
    wait_until(ex.held.is_set, 30)
    assert StateStore(api).put_job(pinned("cache", "node1", port=6060), 0)
    wait_until(lambda: states(api).get("cache-0") == ("pending", "node1"), 30)  # queued
    # its session is destroyed (as when its node fails) and another scheduler takes the lock
    assert api.client.session.destroy(s1.lock.session_id)
    s2 = Scheduler(api, SchedulerConfig(name="s2", inventory="unused", lock_delay=0, seed=7),
                   executor=RecordingExecutor(api))
    wait_until(s2.lock.acquire, 30)
    wait_until(lambda: not s1.lock.is_leader, 30)
    wait_until(lambda: s1.dispatcher.counts() == (1, 0), 30)  # only the held stop is left
    before = records(api)
    ex.release.set()  # the deposed leader's stop ends now
    wait_until(lambda: ("hog-0", "node1") in ex.stopped, 30)
    time.sleep(2.0)  # room for a write that must not come
    assert "hog-0" in states(api)
    assert records(api) == before  # nothing written: not the record, not its index
    assert ("cache-0", "node1") not in ex.placed  # and its queued batch never started
    s2.lock.step_down()


def test_a_placement_that_outlasts_its_health_timeout_does_not_make_the_loop_spin(
        hog_and_web, wait_until):
    """While a placement runs past its slot's health timeout, the loop does not step again and
    again for that deadline (the batch's end wakes it): a handful of steps, not one per 50 ms."""
    api, ex, begin = hog_and_web
    s = begin()
    steps = []
    step = s.step
    s.step = lambda: steps.append(1) or step()
    ex.slow_places = {"node1"}
    assert StateStore(api).put_job(pinned("cache", "node1", port=6060,
                                          update={"max_parallel": 1, "health_timeout": "1s"}),
                                   0)
    wait_until(ex.held.is_set, 30)
    time.sleep(4.0)  # the 1 s health timeout long past
    assert len(steps) < 10
    ex.release.set()
    wait_until(lambda: states(api).get("cache-0") == ("running", "node1"), 30)


def test_one_call_split_over_a_busy_and_a_free_node_fails_neither_half(hog_and_web,
                                                                       wait_until):
    """One placement call whose instances go to a busy node (node1: hog-0's stop hangs) and a
    free one runs as two batches. The free half's outcome must touch only its own slots: it
    once applied to the whole call, so the busy half (no outcome yet) was failed with "no
    result" and placed again (a batch run twice: chaos finding 9)."""
    api, ex, begin = hog_and_web
    begin()
    jobs.scale(StateStore(api), "hog", 0)
    wait_until(ex.held.is_set, 30)
    away_from = [{"attribute": "name", "operator": "ne", "value": n} for n in ("node3", "node4")]
    assert StateStore(api).put_job(web_spec(count=2, name="duo", service={"port": 6060},
                                            cpu="1", constraints=[{"operator": "distinct_hosts"},
                                                                  *away_from]), 0)
    wait_until(lambda: {states(api).get(k) for k in ("duo-0", "duo-1")}
               >= {("running", "node2")}, 30)  # the free half ran and its outcome is in
    (busy,) = [k for k in ("duo-0", "duo-1") if states(api)[k][1] == "node1"]
    time.sleep(1.0)  # room for a step that would fail it
    assert states(api)[busy] == ("pending", "node1")  # waiting for node1, not failed
    ex.release.set()
    wait_until(lambda: states(api).get(busy) == ("running", "node1"), 30)
    assert [k for k, _ in ex.placed].count(busy) == 1  # placed once, never again


def test_walle_plan_says_which_slots_a_batch_acts_on_now(hog_and_web, wait_until, capsys):
    """While hog-0's stop runs beside the loop, the leader holds the slot back and publishes
    it in flight (walle/config/in-flight): `walle plan` says so instead of planning the stop
    again; once the stop's outcome is in, the slot is gone from the plan and from the note."""
    api, ex, begin = hog_and_web
    begin()

    def plan() -> dict[str, tuple[str, str | None, str]]:
        code = main(["plan", "hog", "--json", "--consul-addr", api.address])
        out, _ = capsys.readouterr()
        assert code == 0, out
        (job,) = json.loads(out)["jobs"]
        return {d["instance"]: (d["action"], d["node"], d["reason"]) for d in job["slots"]}

    assert plan() == {"hog-0": ("keep", "node1", "")}
    jobs.scale(StateStore(api), "hog", 0)
    wait_until(ex.held.is_set, 30)
    wait_until(lambda: plan()["hog-0"][0] == "in-flight", 10)
    action, node, why = plan()["hog-0"]
    assert node == "node1" and "a stop playbook" in why
    ex.release.set()
    wait_until(lambda: "hog-0" not in states(api), 30)
    wait_until(lambda: plan() == {}, 10)
