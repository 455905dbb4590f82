"""Slot states with reasons and the per-job event history (issue 10, items 2-3), pure parts:
the bounded ring, its stored form, reason wording, the lost state and the step's events."""

from __future__ import annotations

import json

import pytest

from walle.core import Allocation, Capacity
from walle.core.plan import Evict, Failure, Migrate, Place, Plan, Stop
from walle.core.testing import make_job
from walle.service import history
from walle.service.history import (
    JobHistory,
    SlotEvent,
    Unplaced,
    encode,
    from_data,
    new_refusals,
    scaled,
    step_events,
    to_data,
    unplaced_slots,
)
from walle.service.records import (
    SlotRecord,
    evicted_by,
    from_stored,
    placed_because,
    refusal,
    to_stored,
    with_node,
)
from walle.service.scheduler import StepReport

T0 = 43_384.0  # 12:03:04 UTC on 1 January 1970


def alloc(job="web", slot=1, node="node2", state="running") -> Allocation:
    return Allocation(job=job, slot=slot, node=node, reserved=Capacity(1, 1),
                      ceiling=Capacity(1, 1), spec_digest="d", runtime_digest="r", state=state)


def events(n: int, message: str = "m") -> list[SlotEvent]:
    return [SlotEvent(float(i), "placed", message, i % 3, "node1") for i in range(n)]


# ----- the ring --------------------------------------------------------------------------------
def test_events_are_numbered_and_only_the_last_max_events_are_kept():
    h = JobHistory().add(events(3))
    assert [e.seq for e in h.events] == [1, 2, 3]
    h = h.add(events(history.MAX_EVENTS))
    assert len(h.events) == history.MAX_EVENTS
    assert h.events[0].seq == 4 and h.events[-1].seq == history.MAX_EVENTS + 3


def test_long_messages_are_cut_and_the_value_stays_under_its_size_cap(monkeypatch):
    h = JobHistory().add(events(1, "x" * 10_000))
    assert len(h.events[0].message) == history.MESSAGE_MAX
    monkeypatch.setattr(history, "SIZE_CAP", 8_000)
    h = JobHistory().add(events(100, "y" * 400))
    assert len(encode(h)) <= 8_000
    assert h.events[-1].seq == 100  # the newest are kept, the oldest went
    assert history.SIZE_CAP < 512 * 1024


def test_the_stored_form_reads_back_and_skips_what_is_not_an_event():
    h = JobHistory(unplaced={3: Unplaced("evicted", "evicted by b-0 (priority 90)", "no room")},
                   count=4).add(events(2))
    assert from_data(json.loads(encode(h))) == h
    body = to_data(h)
    body["events"].insert(0, {"event": "no time"})
    body["events"].append("not even a mapping")
    body["unplaced"]["x"] = {"state": "pending"}
    body["count"] = True
    back = from_data(body)
    assert back.events == h.events and back.unplaced == h.unplaced and back.count is None


def test_a_refusal_is_an_event_once_per_distinct_reason():
    before = JobHistory(unplaced={3: Unplaced("pending", "", "no feasible node (a)")})
    same = {3: Unplaced("pending", "", "no feasible node (a)")}
    assert new_refusals(before, same, T0) == []
    other = {3: Unplaced("pending", "", "no feasible node (b)"), 4: Unplaced("pending", "", "x")}
    assert [(e.slot, e.event, e.message) for e in new_refusals(before, other, T0)] == [
        (3, "cannot place", "no feasible node (b)"), (4, "cannot place", "x")]


def test_a_count_change_is_scaled_once_known():
    spec = make_job("web", 4)
    assert scaled(spec, JobHistory(), T0) == []  # first sight: nothing to compare with
    assert scaled(spec, JobHistory(count=4), T0) == []
    (event,) = scaled(spec, JobHistory(count=3), T0)
    assert (event.event, event.message, event.slot) == ("scaled", "count 3 -> 4", None)


def test_unplaced_slots_are_those_without_record_that_are_refused_or_evicted():
    spec = make_job("web", 4)
    records = {"web-0": SlotRecord(alloc(slot=0, node="node1"))}
    refused = {"web-1": "no feasible node (x)", "web-0": "ignored: it has a record"}
    evicted = {"web-2": "evicted by b-0 (priority 90)"}
    before = JobHistory(unplaced={3: Unplaced("evicted", "evicted by b-1", "")})
    out = unplaced_slots(spec, records, frozenset(), refused, evicted, before)
    assert out == {1: Unplaced("pending", "", "no feasible node (x)"),
                   2: Unplaced("evicted", "evicted by b-0 (priority 90)", ""),
                   3: Unplaced("evicted", "evicted by b-1", "")}
    assert out[2].why == "evicted by b-0 (priority 90)"
    assert unplaced_slots(spec, records, frozenset({"web-1"}), refused, {}, JobHistory()) == {}


# ----- reasons ---------------------------------------------------------------------------------
def test_a_refusal_names_the_filters_with_their_node_counts():
    f = Failure("web", (1,), (("distinct_hosts", 2), ("node down", 1)),
                "2 nodes: distinct_hosts; 1 node: node down")
    assert refusal(f) == "no feasible node (2 nodes: distinct_hosts; 1 node: node down)"
    spent = Failure("etl", (0,), (("failed 3 times, retries 2", 1),),
                    "1 node: failed 3 times, retries 2")
    assert refusal(spent) == "out of retries (failed 3 times, retries 2)"


def test_eviction_and_placement_reasons_name_who_and_why():
    jobs = {"batch": make_job("batch", 1, priority=90)}
    assert evicted_by("batch-0", jobs) == "evicted by batch-0 (priority 90)"
    assert evicted_by("gone-0", jobs) == "evicted by gone-0"
    assert placed_because("new", jobs) == "new instance"
    assert placed_because("evicted by batch-0", jobs) == \
        "evicted by batch-0 (priority 90); placed again"
    assert placed_because("failed on node3", jobs) == "replaces the instance that failed on node3"


def test_a_record_on_a_down_node_is_lost_with_the_time_it_went_down():
    r = SlotRecord(alloc(), reason="")
    lost = with_node(r, "down", T0)
    assert (lost.state, lost.reason) == ("lost", "node node2 down since 12:03:04 UTC")
    assert lost.alloc.state == "running"  # the core's state is left alone
    assert with_node(lost, "down", T0 + 60) == lost  # the time it went down stays
    gone = with_node(r, None, T0)
    assert gone.reason == "node node2 gone since 12:03:04 UTC"
    back = with_node(lost, "ready", T0 + 60)
    assert (back.state, back.reason) == ("running", "")
    done = SlotRecord(alloc(state="stopped")).marked("complete", "finished successfully")
    assert with_node(done, "down", T0) == done  # a finished batch run is not lost


def test_the_reason_shown_joins_the_state_reason_and_the_refusal():
    r = with_node(SlotRecord(alloc()), "down", T0)
    r = SlotRecord(r.alloc, status=r.status, reason=r.reason, refused="no feasible node (x)")
    assert r.why == "node node2 down since 12:03:04 UTC; no feasible node (x)"


def test_records_keep_their_word_and_old_records_stay_readable():
    r = SlotRecord(alloc(state="stopped"), reason="finished successfully", status="complete",
                   refused="")
    back = from_stored(to_stored(r))
    assert (back.state, back.reason) == ("complete", "finished successfully")
    stored = to_stored(SlotRecord(alloc()))
    old = type(stored)(**{**stored.__dict__, "extra": {k: v for k, v in stored.extra.items()
                                                     if k not in ("status", "refused")}})
    assert from_stored(old).state == "running"
    newer = type(stored)(**{**stored.__dict__, "extra": {**stored.extra, "status": "zombie"}})
    assert from_stored(newer).state == "running"  # an unknown word is not shown, not fatal
    with pytest.raises(ValueError, match="slot state"):
        SlotRecord(alloc()).marked("zombie", "")


# ----- the step's events -----------------------------------------------------------------------
def test_a_step_becomes_events_in_the_order_it_did_things():
    old, new = alloc(slot=0, node="node2"), alloc(slot=0, node="node3", state="pending")
    victim = alloc(slot=2, node="node1")
    plan = Plan(places=(Place(alloc(slot=1, node="node1", state="pending"), "new"),),
                migrates=(Migrate(old, new, "node node2 draining"),),
                evictions=(Evict(victim, "batch-0"),),
                stops=(Stop(alloc(slot=5, node="node1"), "scaled down to 5"),))
    records = {"web-0": SlotRecord(new), "web-1": SlotRecord(plan.places[0].alloc,
                                                              reason="new instance"),
               "web-4": SlotRecord(alloc(slot=4), status="lost", reason="node node2 down")}
    report = StepReport(running=["web-3"], stopped=["web-2", "web-5", "orphan web-7"],
                        lost=["web-4"], placed=["web-1@node1", "web-0@node3", "web-8@node2"],
                        failed={"web-6": "place: boom"}, refused={"web-4": "no room"},
                        rolled_back=["web"])
    out = step_events(report, plan, records, {}, T0)
    assert list(out) == ["web"]
    got = [(e.slot, e.event, e.node, e.message) for e in out["web"]]
    assert got == [
        (3, "running", "", "checks passing"),
        (2, "evicted", "node1", "evicted by batch-0"),
        (5, "stopped", "node1", "scaled down to 5"),
        (7, "stopped", "", "orphaned instance"),
        (4, "lost", "node2", "node node2 down"),
        (1, "placed", "node1", "new instance"),
        (0, "drained", "node3", "from node2: node node2 draining"),
        (8, "placed", "node2", "placed again on its node"),
        (6, "failed", "", "place: boom"),
        (4, "cannot place", "node2", "no room"),
        (None, "rolled back", "", "to the previous version"),
    ]


def test_what_comes_from_consul_reaches_the_terminal_escaped():
    from walle.cli.events import event_rows

    h = from_data({"events": [{"time": T0, "event": "placed\x1b[2J", "node": "n\x07",
                               "message": "line\nbreak\x1b]0;x", "slot": 1, "seq": 1}],
                   "unplaced": {"2": {"state": "\x1b[31mred", "reason": "r"}}})
    (row,) = event_rows({"web": h})
    assert "\x1b" not in row["event"] + row["message"] and "\x07" not in row["node"]
    assert row["message"] == "line break\\x1b]0;x" and row["time"] == "12:03:04 UTC"
    assert h.unplaced[2].state == "pending"
