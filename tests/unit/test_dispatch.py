"""The dispatcher (service/dispatch.py): batches beside the leader's loop, a bounded number at
once, one at a time per node in submission order; outcomes of an earlier term are dropped."""

from __future__ import annotations

import threading
import time

import pytest

from walle.cli.main import build_parser
from walle.cli.scheduler import scheduler_config
from walle.service.dispatch import Dispatcher
from walle.service.executor import Outcome

WAIT = 30.0  # a safety net: the gates below open as soon as the test says


class Nodes:
    """A fake executor call: items are (key, node, nodes it also waits for...); each call
    waits for its node's gate and
    logs when it began and ended; `peak` is the most calls at once."""

    def __init__(self):
        self.gates: dict[str, threading.Event] = {}
        self.began: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.running = self.peak = 0
        self.mutex = threading.Lock()

    def gate(self, node: str) -> threading.Event:
        return self.gates.setdefault(node, threading.Event())

    def run(self, items):
        with self.mutex:
            self.running += 1
            self.peak = max(self.peak, self.running)
        for item in items:
            self.began[item[0]] = time.monotonic()
        for item in items:
            self.gate(item[1]).wait(WAIT)
        with self.mutex:
            self.running -= 1
        for item in items:
            self.ended[item[0]] = time.monotonic()
        return {item[0]: Outcome(True) for item in items}


def submit(d: Dispatcher, nodes: Nodes, done: list, *items):
    return d.submit("place", list(items), lambda i: frozenset(i[1:]), lambda i: i[0], nodes.run,
                    lambda outcomes: done.append(sorted(outcomes)))


def wait_for(predicate):
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def finish(d: Dispatcher) -> list:
    applied = []
    for batch in d.take_finished():
        batch.done(batch.outcomes)
        applied.append(sorted(batch.keys))
    return applied


def test_no_more_batches_run_than_the_limit_and_the_rest_start_as_slots_free():
    woken = threading.Event()
    d, nodes, done = Dispatcher(2, woken.set), Nodes(), []
    for i in range(5):  # five nodes, each its own batch (each submitted while others run)
        submit(d, nodes, done, (f"a-{i}", f"n{i}"))
    assert d.counts() == (2, 3)
    assert d.in_flight() == {f"a-{i}" for i in range(5)}
    for i in range(5):
        nodes.gate(f"n{i}").set()
    wait_for(lambda: d.counts() == (0, 0))
    assert woken.is_set() and nodes.peak == 2
    assert sorted(k for keys in finish(d) for k in keys) == [f"a-{i}" for i in range(5)]
    assert d.in_flight() == set()  # in flight until applied, then not


def test_a_later_batch_for_a_busy_node_waits_while_others_go_ahead():
    d, nodes, done = Dispatcher(4, lambda: None), Nodes(), []
    submit(d, nodes, done, ("stop-0", "n1"))
    # one call: its n1 part waits for n1, its n2 part starts now
    batches = submit(d, nodes, done, ("web-0", "n1"), ("web-1", "n2"))
    assert sorted(sorted(b.keys) for b in batches) == [["web-0"], ["web-1"]]
    nodes.gate("n2").set()
    wait_for(lambda: "web-1" in nodes.ended)
    assert "web-0" not in nodes.began  # n1 still runs stop-0
    nodes.gate("n1").set()
    wait_for(lambda: "web-0" in nodes.ended)
    assert nodes.began["web-0"] >= nodes.ended["stop-0"]


def test_a_slot_placed_elsewhere_waits_for_the_stop_of_its_evicted_instance():
    d, nodes, done = Dispatcher(4, lambda: None), Nodes(), []
    submit(d, nodes, done, ("stop-0", "n1"))
    submit(d, nodes, done, ("place-0", "n2", "n1"))  # on n2, once n1's stop ended
    nodes.gate("n2").set()
    time.sleep(0.5)  # room for a start that would not wait
    assert "place-0" not in nodes.began
    nodes.gate("n1").set()
    wait_for(lambda: d.counts() == (0, 0))
    assert nodes.began["place-0"] >= nodes.ended["stop-0"]


def test_outcomes_of_an_earlier_term_are_never_applied_but_its_nodes_stay_busy():
    d, nodes, done = Dispatcher(1, lambda: None), Nodes(), []
    submit(d, nodes, done, ("old-0", "n1"))
    submit(d, nodes, done, ("queued-0", "n2"))  # waits for the only slot
    d.new_term()  # leadership lost and won again
    assert d.in_flight() == {"old-0"}  # the queued one never started: dropped
    submit(d, nodes, done, ("new-0", "n1"))  # must wait for old-0, still running on n1
    nodes.gate("n1").set()
    nodes.gate("n2").set()
    wait_for(lambda: d.counts() == (0, 0))
    assert "queued-0" not in nodes.began
    assert nodes.began["new-0"] >= nodes.ended["old-0"]
    assert finish(d) == [["new-0"]] and done == [["new-0"]]


def test_a_call_that_raises_fails_each_of_its_keys_with_the_reason():
    d = Dispatcher(1, lambda: None)

    def broken(items):
        raise ValueError("no address known for node 'n1'")

    d.submit("place", [("a-0", "n1"), ("a-1", "n1")], lambda i: frozenset({i[1]}),
             lambda i: i[0], broken, lambda outcomes: None)
    wait_for(lambda: d.counts() == (0, 0))
    [batch] = d.take_finished()
    assert batch.outcomes == {k: Outcome(False, "place: ValueError: no address known for node 'n1'")
                              for k in ("a-0", "a-1")}


def test_the_bound_is_a_scheduler_flag():
    base = ["scheduler", "run", "--inventory", "/etc/walle/inventory.yml"]
    # the leader waits for each batch by default (opt-in: bench/README.md, finding 9)
    assert scheduler_config(build_parser().parse_args(base)).max_inflight_batches == 0
    args = build_parser().parse_args(base + ["--max-inflight-batches", "4"])
    assert scheduler_config(args).max_inflight_batches == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--max-inflight-batches", "-1"])
