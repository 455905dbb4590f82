"""The leader's side of usage-driven grants (service/elastic.py): readings become samples of
the right instances, once, and never a sample of a grant that has since changed."""

from __future__ import annotations

from dataclasses import replace

from walle.core.grants import grants_for
from walle.core.model import Allocation, Capacity, Node
from walle.service.elastic import ElasticGrants, Reading, UsagePoller

MIB = 1 << 20
NODE = Node("n1", Capacity(2.0, 1024 * MIB))


def alloc(job: str, state: str = "running") -> Allocation:
    grants = grants_for(2.0, 1024 * MIB, [(f"{j}-0", 0.5, 1.8, 64 * MIB, 64 * MIB)
                                          for j in ("a", "b")])
    return Allocation(job, 0, "n1", Capacity(0.5, 64 * MIB), Capacity(1.8, 64 * MIB), "d", "r",
                      state=state, grant=grants[f"{job}-0"])


def reading(started: float, a_cpu: float, b_cpu: float = 0.0) -> Reading:
    return Reading(started, {("n1", "a-0"): {"cpu_percent": a_cpu},
                             ("n1", "b-0"): {"cpu_percent": b_cpu, "memory_bytes": "x"}})


def test_two_pressing_samples_raise_a_grant_and_the_event_says_by_how_much():
    elastic = ElasticGrants()
    allocs = [alloc("a"), alloc("b")]
    bigger = {"n1": replace(NODE, capacity=Capacity(4.0, 1024 * MIB))}  # room to grow into
    assert elastic.decide(bigger, allocs, reading(1, 100)) == []
    (done,) = elastic.decide(bigger, allocs, reading(2, 100))
    assert done.alloc.grant.cpu_quota_percent > 100
    assert done.message.startswith("usage: CPUQuota 100% -> ") and "(using 100%)" in done.message


def test_a_throttled_instance_is_raised_and_the_event_says_it_was_throttled():
    """The exporter's cpu_throttled_share reaches the policy (adapters/usage.py reads it):
    usage in the dead band, throttled in 97 % of periods: a rise that says why."""
    elastic = ElasticGrants()
    allocs = [alloc("a"), alloc("b")]
    bigger = {"n1": replace(NODE, capacity=Capacity(4.0, 1024 * MIB))}

    def throttled(started, share):
        return Reading(started, {("n1", "a-0"): {"cpu_percent": 84, "cpu_throttled_share": share},
                                 ("n1", "b-0"): {"cpu_percent": 84}})
    assert elastic.decide(bigger, allocs, throttled(1, 0.97)) == []
    (done,) = elastic.decide(bigger, allocs, throttled(2, 0.97))
    assert done.alloc.key == "a-0" and done.change.measured.cpu_throttled == 0.97
    assert "(using 84%, throttled in 97% of periods)" in done.message
    # a share that is not one (from an untrusted node) is no sample of throttling
    elastic = ElasticGrants()
    for t, bad in enumerate((7, -1, "x", True, float("nan")), start=3):
        assert elastic.decide(bigger, allocs, throttled(t, bad)) == []


def test_a_reading_started_before_a_change_is_not_a_sample():
    elastic = ElasticGrants()
    allocs = [alloc("a"), alloc("b")]
    elastic.decide({"n1": NODE}, allocs, reading(1, 100))
    elastic.applied(["a-0"], at=5)  # its grant changed (by the plan, say) at 5
    assert elastic.decide({"n1": NODE}, allocs, reading(4, 100)) == []
    assert elastic.decide({"n1": NODE}, allocs, reading(6, 100)) == []  # a new streak: 1
    assert "a-0" in [d.alloc.key for d in elastic.decide({"n1": NODE}, allocs, reading(7, 100))]


def test_nodes_not_ready_and_grants_without_limits_are_left_alone():
    elastic = ElasticGrants()
    allocs = [alloc("a"), alloc("b")]
    draining = {"n1": replace(NODE, state="draining")}
    for t in range(5):
        assert elastic.decide(draining, allocs, reading(t, 100)) == []
    no_high = [replace(allocs[0], grant=replace(allocs[0].grant, memory_high=None)), allocs[1]]
    for t in range(5):
        assert elastic.decide({"n1": NODE}, no_high, reading(t, 100)) == []


def test_the_poller_reads_at_most_once_per_interval_and_hands_each_reading_over_once():
    now = [100.0]
    reads = []
    poller = UsagePoller(lambda nodes: reads.append(sorted(nodes)) or {("n1", "a-0"): {}},
                         every=15, clock=lambda: now[0])
    poller.poll({"n1"})
    poller.join(10)
    poller.poll({"n1"})  # not due yet
    assert reads == [["n1"]]
    assert poller.take() == Reading(100.0, {("n1", "a-0"): {}})
    assert poller.take() is None
    now[0] += 15
    poller.poll({"n1", "n2"})
    poller.join(10)
    assert reads == [["n1"], ["n1", "n2"]] and poller.next_due() == 130.0
    assert UsagePoller(lambda nodes: {}, every=0, clock=lambda: 0).next_due() is None
