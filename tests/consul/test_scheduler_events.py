"""Slot states with reasons and the per-job event history (issue 10, items 2-3), driven by the
recording executor of test_scheduler_service against a fresh 3-node stand-in: the new user's
scenario (web count 3, distinct_hosts and a static port, node2 dies) must say why web-1 does
not move, in the record, in `walle status` and in `walle events`."""

from __future__ import annotations

import json
import threading
import time

import pytest
import test_scheduler_service
from test_scheduler_service import (  # the recording executor and a fresh 3-node stand-in
    Clock,
    make_scheduler,
    records,
    register_node,
    web_spec,
)

from walle.adapters.consul import StateStore
from walle.cli.main import main
from walle.service.scheduler import FAILED_CHECK_GRACE

pytestmark = pytest.mark.consul

cluster = test_scheduler_service.cluster  # the fixture: a fresh stand-in with 3 nodes

DISTINCT = {"constraints": [{"operator": "distinct_hosts"}]}


def walle(capsys, api, *argv) -> tuple[int, str, str]:
    code = main([*argv, "--consul-addr", api.address])
    out, err = capsys.readouterr()
    return code, out, err


def events(api, job: str = "web") -> list:
    from walle.service.history import from_data  # here: the old code fails the test, not the file

    _, stored = StateStore(api).events(job)
    return list(from_data(stored[job][0]).events) if job in stored else []


def kill(api, node: str) -> None:
    register_node(api, node, "10.77.250.99", status="critical")


def web_on_three_nodes(api, node_down_grace: float = 0):
    """web count 3, distinct_hosts, port 8080: one instance per node, no room to spare."""
    clock = Clock()
    s, ex = make_scheduler(api, clock, node_down_grace=node_down_grace)  # 0: lost at once
    assert StateStore(api).put_job(web_spec(count=3, **DISTINCT), 0)
    s.step()
    s.step()
    return s, ex, clock


def scale_web_to(api, count: int) -> None:
    store = StateStore(api)
    current = store.job("web")
    assert store.put_job(web_spec(count=count, **DISTINCT), current.modify_index,
                         previous=current)


def test_a_lost_instance_with_nowhere_to_go_says_why_in_its_record(cluster):
    from walle.service.records import clock_time

    s, ex, clock = web_on_three_nodes(cluster)
    victim = records(cluster)["web-1"].node
    s.step()
    clock.now += 100
    kill(cluster, victim)
    s.step()  # the first step that sees it down: the time it names
    stored = records(cluster)["web-1"]
    assert stored.extra["status"] == "lost"
    assert stored.extra["reason"] == f"node {victim} down since {clock_time(clock.now)}"
    refused = stored.extra["refused"]
    assert refused.startswith("no feasible node (")
    assert "distinct_hosts" in refused and "port 8080 in use" in refused
    assert "1 node: node down" in refused
    clock.now += FAILED_CHECK_GRACE + 1  # its checks stay critical: still lost, same reason
    s.step()
    s.step()
    again = records(cluster)["web-1"]
    assert again.extra["status"] == "lost"
    assert again.extra["reason"] == stored.extra["reason"]
    s.lock.step_down()


def test_status_shows_the_lost_slot_with_its_reason(cluster, capsys):
    s, ex, clock = web_on_three_nodes(cluster)
    victim = records(cluster)["web-1"].node
    kill(cluster, victim)
    s.step()
    code, out, _ = walle(capsys, cluster, "status", "web", "--json")
    assert code == 0
    rows = {row["instance"]: row for row in json.loads(out)}
    assert rows["web-1"]["state"] == "lost"
    assert f"node {victim} down since" in rows["web-1"]["reason"]
    assert "distinct_hosts" in rows["web-1"]["reason"]
    assert rows["web-0"]["state"] == "running" and rows["web-0"]["reason"] is None
    code, out, _ = walle(capsys, cluster, "status", "web")
    header, *lines = out.splitlines()
    assert header.split() == ["INSTANCE", "NODE", "PORTS", "STATE", "HEALTH", "CPU_QUOTA",
                              "CPU_WEIGHT", "MEMORY_MAX", "VERSION", "PREVIOUS", "REASON"]
    (lost,) = [line for line in lines if line.startswith("web-1 ")]
    assert " lost " in lost and f"node {victim} down since" in lost
    assert lost.split()[2] == "8080"  # the static port it holds
    s.lock.step_down()


def test_events_tell_the_story_in_order_and_a_refusal_only_once(cluster, capsys):
    s, ex, clock = web_on_three_nodes(cluster)
    victim = records(cluster)["web-1"].node
    kill(cluster, victim)
    for _ in range(4):  # the refusal stays the same: one event, not one per step
        s.step()
        clock.now += 5
    story = [(e.slot, e.event) for e in events(cluster) if e.slot == 1]
    assert story == [(1, "placed"), (1, "running"), (1, "lost"), (1, "cannot place")]
    lost, refused = [e for e in events(cluster) if e.event in ("lost", "cannot place")]
    assert lost.node == victim and f"node {victim} down" in lost.message
    assert "distinct_hosts" in refused.message
    seqs = [e.seq for e in events(cluster)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    code, out, _ = walle(capsys, cluster, "events", "web", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["slot"], r["event"]) for r in rows if r["slot"] == 1] == story
    assert {"time", "job", "slot", "node", "event", "message"} <= set(rows[0])
    s.lock.step_down()


def test_a_node_that_comes_back_clears_lost(cluster):
    s, ex, clock = web_on_three_nodes(cluster)
    victim = records(cluster)["web-1"].node
    kill(cluster, victim)
    s.step()
    register_node(cluster, victim, "10.77.250.99", status="passing")
    s.step()
    stored = records(cluster)["web-1"]
    assert stored.state == "running" and stored.extra["status"] == ""
    assert stored.extra["reason"] == "" and stored.extra["refused"] == ""
    s.lock.step_down()


def test_a_slot_with_no_record_that_cannot_be_placed_is_pending_with_why(cluster, capsys):
    s, ex, clock = web_on_three_nodes(cluster)
    scale_web_to(cluster, 4)
    s.step()
    s.step()
    code, out, _ = walle(capsys, cluster, "status", "web", "--json")
    rows = {row["instance"]: row for row in json.loads(out)}
    assert rows["web-3"]["state"] == "pending" and rows["web-3"]["node"] is None
    assert rows["web-3"]["reason"].startswith("no feasible node (3 nodes: ")
    kinds = [(e.slot, e.event) for e in events(cluster)]
    assert (None, "scaled") in kinds and kinds.count((3, "cannot place")) == 1
    (scaled,) = [e for e in events(cluster) if e.event == "scaled"]
    assert scaled.message == "count 3 -> 4"
    s.lock.step_down()


def test_a_batch_run_that_succeeds_is_complete(cluster, capsys):
    from walle.jobspec import parse_spec
    from walle.naming import service_unit
    from walle.service.scheduler import BATCH_PROBE
    clock = Clock()
    s, ex = make_scheduler(cluster, clock, node_down_grace=0)
    batch = parse_spec({"name": "etl", "kind": "batch", "count": 1,
                        "resources": {"cpu": "0.5", "memory": "64M"},
                        "runtime": {"command": "/bin/true"}})
    StateStore(cluster).put_job(batch, 0)
    s.step()
    s.step()
    ex.units[service_unit("etl", 0)] = {"ActiveState": "inactive", "Result": "success",
                                        "ExecMainStatus": "0",
                                        "InactiveExitTimestampMonotonic": "1"}
    clock.now += BATCH_PROBE + 1
    s.step()
    stored = records(cluster)["etl-0"]
    assert stored.state == "stopped"  # the core's word, which its readers (chaos) use
    assert stored.extra["status"] == "complete"
    code, out, _ = walle(capsys, cluster, "status", "etl", "--json")
    (row,) = json.loads(out)
    assert row["state"] == "complete"
    assert [e.event for e in events(cluster, "etl")][-1] == "finished"
    s.lock.step_down()


def test_a_failed_history_write_never_breaks_the_step(cluster, monkeypatch, caplog):
    s, ex, clock = web_on_three_nodes(cluster)

    def refuse(*args, **kwargs):
        raise RuntimeError("txn refused")

    monkeypatch.setattr(s.store, "put_events", refuse)
    monkeypatch.setattr(s.store, "put_many_events", refuse)  # the step's batched write
    victim = records(cluster)["web-1"].node
    kill(cluster, victim)
    report = s.step()  # no exception
    assert report.lost == ["web-1"]
    assert records(cluster)["web-1"].extra["status"] == "lost"
    assert "could not record events of web" in caplog.text
    s.lock.step_down()


def test_the_history_stays_bounded(cluster, monkeypatch):
    from walle.service import history

    monkeypatch.setattr(history, "MAX_EVENTS", 5)
    s, ex, clock = web_on_three_nodes(cluster)
    stored = events(cluster)
    assert len(stored) == 5 and stored[-1].seq == 6  # 3 placed + 3 running: the first went
    s.lock.step_down()


def test_status_with_no_jobs_says_so_on_its_own_line(cluster, capsys):
    code, out, err = walle(capsys, cluster, "status")
    assert code == 0
    assert out == "no jobs (`walle run FILE` submits one)\n" and err == ""


def test_status_counts_a_lost_instance_as_lost_not_running(cluster, capsys):
    s, ex, clock = web_on_three_nodes(cluster)
    kill(cluster, records(cluster)["web-1"].node)
    s.step()
    code, out, _ = walle(capsys, cluster, "status", "--json")
    (row,) = json.loads(out)["jobs"]
    assert (row["running"], row["lost"], row["pending"]) == (2, 1, 0)
    code, out, _ = walle(capsys, cluster, "status")
    header, line = out.splitlines()
    assert header.split() == ["JOB", "KIND", "COUNT", "RUNNING", "PENDING", "LOST", "FAILED",
                              "VERSION"]
    assert line.split()[:7] == ["web", "service", "3", "2", "0", "1", "0"]
    s.lock.step_down()


def test_events_of_an_unknown_job_exit_1_and_no_events_say_so(cluster, capsys):
    code, _, err = walle(capsys, cluster, "events", "nope")
    assert code == 1 and "no job 'nope'" in err
    code, out, _ = walle(capsys, cluster, "events")
    assert code == 0 and out == "no events\n"


def test_events_follow_prints_new_events_once_and_ends(cluster, capsys):
    s, ex, clock = web_on_three_nodes(cluster)
    codes = []
    follower = threading.Thread(target=lambda: codes.append(main([
        "events", "web", "--follow", "--for", "3", "--json", "--consul-addr",
        cluster.address])))
    follower.start()
    time.sleep(0.5)
    kill(cluster, records(cluster)["web-1"].node)
    s.step()  # lost, cannot place: written while the follower waits
    follower.join(timeout=10)
    assert codes == [0]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [r["event"] for r in lines[-2:]] == ["lost", "cannot place"]
    s.lock.step_down()


def test_an_evicted_slot_with_nowhere_to_go_shows_who_took_its_room(cluster, capsys):
    from walle.jobspec import parse_spec

    def job(name, count, cpu, priority):
        return parse_spec({"name": name, "kind": "service", "count": count,
                           "priority": priority, "resources": {"cpu": cpu, "memory": "64M"},
                           "runtime": {"command": "/bin/sleep", "args": ["1000"]}})

    clock = Clock()
    s, ex = make_scheduler(cluster, clock, node_down_grace=0)
    store = StateStore(cluster)
    store.put_job(job("low", 3, "3", 20), 0)  # 3 of each node's 4 cores
    s.step()
    s.step()
    store.put_job(job("high", 1, "2", 90), 0)  # fits nowhere: evicts one low instance
    s.step()
    s.step()
    code, out, _ = walle(capsys, cluster, "status", "low", "--json")
    (evicted,) = [row for row in json.loads(out) if row["state"] != "running"]
    assert evicted["state"] == "evicted" and evicted["node"] is None
    assert evicted["reason"].startswith("evicted by high-0 (priority 90); no feasible node (")
    assert "not enough cpu" in evicted["reason"]
    kinds = [(e.event, e.message) for e in events(cluster, "low") if e.slot == evicted["slot"]]
    assert kinds[-2:] == [("evicted", "evicted by high-0 (priority 90)"),
                          ("cannot place", evicted["reason"])]
    s.lock.step_down()


def test_a_drained_node_whose_instance_cannot_move_says_why(cluster, capsys):
    s, ex, clock = web_on_three_nodes(cluster)
    node = records(cluster)["web-0"].node
    cluster.client.kv.put(f"walle/nodes/{node}/drain", "drain")
    s.step()
    s.step()
    code, out, _ = walle(capsys, cluster, "status", "web", "--json")
    row = {r["instance"]: r for r in json.loads(out)}["web-0"]
    assert row["state"] == "running" and row["node"] == node
    assert row["reason"].startswith("cannot move: no feasible node (")
    assert "node draining" in row["reason"]
    assert [e.event for e in events(cluster) if e.slot == 0][-1] == "cannot place"
    s.lock.step_down()


def test_a_stopped_job_keeps_its_story_and_shows_no_unplaced_slots(cluster, capsys):
    s, ex, clock = web_on_three_nodes(cluster)
    scale_web_to(cluster, 4)
    s.step()
    assert walle(capsys, cluster, "stop", "web")[0] == 0
    s.step()
    code, _, err = walle(capsys, cluster, "status", "web")
    assert code == 1 and "no job 'web'" in err
    stops = [(e.slot, e.message) for e in events(cluster) if e.event == "stopped"]
    assert sorted(stops) == [(0, "job removed"), (1, "job removed"), (2, "job removed")]
    s.lock.step_down()


def test_a_history_value_that_cannot_be_read_is_replaced_not_fatal(cluster, capsys):
    cluster.client.kv.put("walle/events/web", b"not json")
    s, ex, clock = web_on_three_nodes(cluster)
    assert [e.seq for e in events(cluster)] == [1, 2, 3, 4, 5, 6]
    code, out, _ = walle(capsys, cluster, "events", "--json")
    assert code == 0 and len(json.loads(out)) == 6
    s.lock.step_down()


def test_events_follow_ends_cleanly_on_ctrl_c(cluster, capsys, monkeypatch):
    from walle.cli import events as events_cli

    class Interrupted:
        def __init__(self, *args, **kwargs):
            pass

        def next_change(self, timeout=None):
            raise KeyboardInterrupt

    s, ex, clock = web_on_three_nodes(cluster)
    monkeypatch.setattr(events_cli, "Watch", Interrupted)
    code, out, err = walle(capsys, cluster, "events", "web", "--follow")
    assert code == 0 and err == ""
    header, *rows = out.splitlines()
    assert header.split() == ["TIME", "JOB", "SLOT", "NODE", "EVENT", "MESSAGE"]
    assert len(rows) == 6 and all(" web " in row for row in rows)
    s.lock.step_down()


def test_a_slot_held_for_the_down_grace_is_not_refused_before_it_is_lost(cluster):
    """With fencing (down grace 15 s) the slot of a failed node is held, not being placed:
    the lab saw "cannot place" recorded before "lost" (the core's refusal for a held slot
    was kept). Now: held quietly, then lost, then cannot place."""
    s, ex, clock = web_on_three_nodes(cluster, node_down_grace=15)
    victim = records(cluster)["web-1"].node
    kill(cluster, victim)
    for _ in range(3):  # within the grace
        report = s.step()
        assert not any(1 in f.slots for f in report.plan.failures if f.job == "web")
        clock.now += 4
    clock.now += 10  # past it
    s.step()
    s.step()
    story = [e.event for e in events(cluster) if e.slot == 1]
    assert story.index("lost") < story.index("cannot place"), story
    s.lock.step_down()
