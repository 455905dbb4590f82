"""Which nodes are away (gone from the catalog or failed, within their grace): the leader's
memory across steps (walle.service.presence). The scheduler's use of it is tested against the
stand-in in tests/consul/test_scheduler_node_leave.py."""

from __future__ import annotations

import pytest

from walle.cli.main import build_parser
from walle.cli.scheduler import scheduler_config
from walle.service.presence import DEFAULT_LEAVE_GRACE, NodePresence

UP = {"node1": True, "node2": True}


def test_a_node_seen_then_missing_is_away_for_the_grace_then_lost():
    p = NodePresence(grace=15)
    assert p.update(UP, [], now=100) == frozenset()
    assert p.update({"node1": True}, [], now=101) == {"node2"}
    assert p.next_deadline(now=101) == pytest.approx(116.1)
    assert p.update({"node1": True}, [], now=115.9) == {"node2"}
    assert p.update({"node1": True}, [], now=116) == frozenset()
    assert p.next_deadline(now=116) is None


def test_a_node_back_in_time_is_present_and_a_later_leave_starts_a_new_grace():
    p = NodePresence(grace=15)
    p.update(UP, [], now=100)
    p.update({"node1": True}, [], now=101)
    assert p.update(UP, [], now=105) == frozenset()
    assert p.update({"node1": True}, [], now=130) == {"node2"}  # counted from 130, not 101
    assert p.update({"node1": True}, [], now=144) == {"node2"}


def test_a_node_only_the_records_name_starts_its_grace_when_first_noticed():
    p = NodePresence(grace=15)
    assert p.update({"node1": True}, ["node2"], now=200) == {"node2"}
    assert p.update({"node1": True}, ["node2"], now=214) == {"node2"}
    assert p.update({"node1": True}, ["node2"], now=215) == frozenset()
    # still named and still missing: it stays lost, the grace does not start again
    assert p.update({"node1": True}, ["node2"], now=300) == frozenset()


def test_a_node_last_seen_failed_gets_no_grace_when_it_leaves():
    p = NodePresence(grace=15)
    p.update({"node1": True, "node2": False}, ["node2"], now=100)
    assert p.update({"node1": True}, ["node2"], now=101) == frozenset()
    assert p.next_deadline(now=101) is None


def test_a_lost_node_named_by_no_record_is_forgotten():
    p = NodePresence(grace=15)
    p.update(UP, [], now=100)
    p.update({"node1": True}, [], now=101)
    p.update({"node1": True}, [], now=120)
    assert "node2" not in p._up and "node2" not in p._missing_since


def test_zero_grace_means_no_one_is_ever_away():
    p = NodePresence(grace=0)
    p.update(UP, [], now=100)
    assert p.update({"node1": True}, ["node2"], now=101) == frozenset()


def test_the_grace_is_a_scheduler_flag():
    base = ["scheduler", "run", "--inventory", "/etc/walle/inventory.yml"]
    assert scheduler_config(build_parser().parse_args(base)).node_leave_grace == \
        DEFAULT_LEAVE_GRACE == 15.0
    args = build_parser().parse_args(base + ["--node-leave-grace", "30"])
    assert scheduler_config(args).node_leave_grace == 30.0
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(base + ["--node-leave-grace", bad])
    with pytest.raises(ValueError, match="0 or more"):
        NodePresence(grace=-1)


def test_a_failed_node_is_away_for_the_down_grace_counted_from_when_first_seen_failed():
    p = NodePresence(grace=15, down_grace=20)
    p.update(UP, ["node2"], now=100)
    assert p.update({"node1": True, "node2": False}, ["node2"], now=101) == {"node2"}
    assert p.next_deadline(now=101) == pytest.approx(121.1)
    assert p.update({"node1": True, "node2": False}, ["node2"], now=120.9) == {"node2"}
    assert p.update({"node1": True, "node2": False}, ["node2"], now=121) == frozenset()
    assert p.next_deadline(now=121) is None


def test_a_failed_node_that_leaves_keeps_the_grace_it_started_when_it_failed():
    p = NodePresence(grace=15, down_grace=20)
    p.update({"node1": True, "node2": False}, ["node2"], now=100)
    assert p.update({"node1": True}, ["node2"], now=110) == {"node2"}  # not a new leave grace
    assert p.update({"node1": True}, ["node2"], now=120) == frozenset()
    assert p.update({"node1": True}, ["node2"], now=200) == frozenset()


def test_a_failed_node_back_in_time_is_present_and_fails_anew_later():
    p = NodePresence(grace=15, down_grace=20)
    p.update({"node1": True, "node2": False}, ["node2"], now=100)
    assert p.update(UP, ["node2"], now=105) == frozenset()
    assert p.update({"node1": True, "node2": False}, ["node2"], now=150) == {"node2"}
    assert p.update({"node1": True, "node2": False}, ["node2"], now=169) == {"node2"}
