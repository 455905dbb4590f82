"""`walle plan` against the Consul stand-in: the leader's own decision as a dry run, in the
scenario a new user met (issue 10): the demo's 3-node lab, `web` with 3 instances,
distinct_hosts and static port 8080, then node2 dies. The plan must say that web-1 cannot be
placed and why, and must not call node1 "best" while node1 already runs web-0.

Exit codes (`walle plan --help`): 0 every slot has its place, 1 a slot has none, 2 bad input,
3 Consul unreachable. The leader's placement is test_scheduler_service's recording executor."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
import test_scheduler_service
from test_scheduler_service import Clock, RecordingExecutor, make_scheduler, register_node

from walle.adapters.consul import StateStore
from walle.adapters.consul.state import PLACEMENT_CONFIG
from walle.cli.main import main
from walle.jobspec import load_spec_file
from walle.service.cluster import load_snapshot
from walle.service.dryrun import dry_run, published_defaults, published_presence
from walle.service.scheduler import Scheduler, SchedulerConfig

pytestmark = pytest.mark.consul

cluster = test_scheduler_service.cluster  # the fixture: a fresh stand-in with 3 nodes

# the demo's job as it was: 3 instances, distinct_hosts, static port 8080 (examples/web.yml
# has a dynamic port now: see test_scheduler_ports.py)
WEB = str(Path(__file__).parents[1] / "data" / "web-static.yml")


def walle(capsys, api, *argv) -> tuple[int, str, str]:
    code = main([*argv, "--consul-addr", api.address])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def web_running(cluster):
    """web placed on node1..3 and running; the leader published its defaults."""
    clock = Clock()
    s, ex = make_scheduler(cluster, clock, node_down_grace=0)
    s.publish_defaults()
    assert StateStore(cluster).put_job(load_spec_file(WEB), 0)
    s.step()
    s.step()
    assert sorted(n for _, n in ex.placed) == ["node1", "node2", "node3"]
    yield cluster, s, clock
    s.lock.step_down()


def where(api) -> dict[str, str]:
    _, stored = StateStore(api).allocs()
    return {f"{j}-{s}": a.node for (j, s), a in stored.items()}


def test_a_healthy_job_keeps_every_instance_and_one_more_cannot_fit(web_running, capsys):
    api, _, _ = web_running
    code, out, _ = walle(capsys, api, "plan", "web", "--json")
    assert code == 0
    body = json.loads(out)
    assert body["defaults"] == {"strategy": "spread", "seed": 7, "node_leave_grace": 15.0,
                                "node_down_grace": 0.0,
                                "source": "published by the leader"}
    (job,) = body["jobs"]
    placed = where(api)
    assert [(d["instance"], d["action"], d["node"]) for d in job["slots"]] == [
        (key, "keep", placed[key]) for key in ("web-0", "web-1", "web-2")]
    new = job["new_instance"]  # a 4th instance: every node holds one already
    assert new["instance"] == "web-3" and new["action"] == "refused" and new["node"] is None
    assert "3 nodes: distinct_hosts" in new["reason"]


def test_node2_down_web_1_cannot_be_placed_and_the_plan_says_why(web_running, capsys):
    api, s, clock = web_running
    placed = where(api)
    lost = next(key for key, node in placed.items() if node == "node2")
    register_node(api, "node2", "10.77.250.12", status="critical", zone="z2")
    clock.now += 1
    report = s.step()  # the leader: the lost slot has nowhere to go
    assert [f.slots for f in report.plan.failures] == [(int(lost.rsplit("-", 1)[1]),)]

    code, out, _ = walle(capsys, api, "plan", "web", "--explain")
    assert code == 1, out  # a slot is refused
    lines = out.splitlines()
    row = next(line for line in lines if line.startswith(lost))
    assert "refused" in row and "node2 (node down)" in row
    assert "2 nodes: distinct_hosts" in row and "2 nodes: port 8080 in use" in row
    assert "1 node: node down" in row
    for key, node in placed.items():
        if key != lost:
            assert next(line for line in lines if line.startswith(key)).split()[3] == node
    assert "best" not in out  # the old answer: "best node1" while node1 ran web-0
    assert "one more instance (web-3) would be refused" in out
    table = lines[lines.index(next(line for line in lines if line.startswith("NODE "))):]
    node1 = next(line for line in table if line.startswith("node1"))
    assert "distinct_hosts: an instance is already there" in node1
    assert "port 8080 in use" in node1
    assert "node down" in next(line for line in table if line.startswith("node2"))

    code, out, _ = walle(capsys, api, "plan", "web", "--json")
    assert code == 1
    (job,) = json.loads(out)["jobs"]
    slot = next(d for d in job["slots"] if d["instance"] == lost)
    assert slot["action"] == "refused" and slot["node"] is None
    assert job["unplaced"] == [lost] and job["nodes"]["chosen"] is None


def test_a_lost_instance_with_room_elsewhere_moves_where_the_leader_then_puts_it(
        cluster, capsys, tmp_path):
    two = tmp_path / "web2.yml"
    two.write_text(Path(WEB).read_text().replace("count: 3", "count: 2"))
    s, ex = make_scheduler(cluster, Clock(), node_down_grace=0)
    s.publish_defaults()
    assert StateStore(cluster).put_job(load_spec_file(two), 0)
    s.step()
    s.step()
    lost, down = "web-1", where(cluster)["web-1"]
    register_node(cluster, down, f"10.77.250.{10 + int(down[-1])}", status="critical")

    code, out, _ = walle(capsys, cluster, "plan", "web", "--json")
    (job,) = json.loads(out)["jobs"]
    slot = next(d for d in job["slots"] if d["instance"] == lost)
    assert code == 0 and slot["action"] == "move"
    assert slot["now"] == f"running on {down} (node down)"
    assert slot["reason"].startswith(f"from {down}")
    ex.placed.clear()
    s.step()  # the leader does what the plan said
    assert ex.placed == [(lost, slot["node"])]
    s.lock.step_down()


def test_without_published_defaults_the_plan_says_it_used_the_built_in_ones(cluster, capsys):
    assert StateStore(cluster).put_job(load_spec_file(WEB), 0)
    code, out, _ = walle(capsys, cluster, "plan", "--json")
    body = json.loads(out)
    assert code == 0 and body["defaults"]["strategy"] == "spread"
    assert body["defaults"]["source"].startswith("built-in defaults")
    assert PLACEMENT_CONFIG in body["defaults"]["source"]
    (job,) = body["jobs"]
    assert sorted(d["node"] for d in job["slots"]) == ["node1", "node2", "node3"]
    assert {d["action"] for d in job["slots"]} == {"place"}
    code, out, _ = walle(capsys, cluster, "plan")
    assert code == 0 and "built-in defaults" in out.splitlines()[0]


def test_a_spec_file_is_decided_as_if_submitted(web_running, capsys, tmp_path):
    api, _, _ = web_running
    bigger = tmp_path / "web4.yml"
    bigger.write_text(Path(WEB).read_text().replace("count: 3", "count: 4"))
    code, out, _ = walle(capsys, api, "plan", str(bigger), "--json")
    (job,) = json.loads(out)["jobs"]
    assert code == 1 and job["count"] == 4
    assert next(d for d in job["slots"] if d["instance"] == "web-3")["action"] == "refused"
    assert len(where(api)) == 3  # nothing was written


def test_bad_input_exits_2_and_an_unreachable_consul_3(cluster, capsys, tmp_path):
    code, _, err = walle(capsys, cluster, "plan", "nope")
    assert code == 2 and "neither a job in the cluster nor a valid spec file" in err
    bad = tmp_path / "bad.yml"
    bad.write_text("name: Bad_Name\nkind: service\n")
    code, _, err = walle(capsys, cluster, "plan", str(bad))
    assert code == 2 and "name" in err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["plan", "--consul-addr", f"http://127.0.0.1:{port}"])
    assert code == 3


def test_a_leader_publishes_its_defaults_when_it_takes_office(cluster, capsys, wait_until):
    store = StateStore(cluster)
    s = Scheduler(cluster, SchedulerConfig(name="s1", inventory="unused", lock_delay=0, seed=3,
                                           strategy="binpack", node_leave_grace=40.0),
                  executor=RecordingExecutor(cluster))
    thread = threading.Thread(target=s.run_forever, daemon=True, name="test-plan-leader")
    thread.start()
    try:
        wait_until(lambda: store.placement_config() is not None, 20)
    finally:
        s.stop()
        thread.join(timeout=70)
    assert store.placement_config() == {"strategy": "binpack", "seed": 3,
                                        "node_leave_grace": 40.0, "node_down_grace": 15.0}
    code, out, _ = walle(capsys, cluster, "plan")
    assert code == 0
    assert out.splitlines()[0] == "defaults: strategy binpack, seed 3 (published by the leader)"
    s.publish_defaults()  # no longer the leader: refused by the lock guard, nothing written
    assert store.placement_config()["seed"] == 3


def test_a_batch_its_node_committed_is_done_in_the_plan_as_for_the_leader(cluster, capsys):
    """The leader applies node commits (walle/done/) before it decides; so does the plan: a
    batch that finished just before its node died is done, not moved."""
    clock = Clock()
    s, _ = make_scheduler(cluster, clock)
    s.publish_defaults()
    StateStore(cluster).put_job(test_scheduler_service.etl_spec(), 0)
    s.step()
    s.step()
    node = where(cluster)["etl-0"]
    test_scheduler_service.commit_as_the_node(
        cluster, "etl-0", node, test_scheduler_service.attempt_of_record(cluster, "etl-0"))
    register_node(cluster, node, "10.77.250.99", status="critical")
    code, out, _ = walle(capsys, cluster, "plan", "etl", "--json")
    (slot,) = json.loads(out)["jobs"][0]["slots"]
    assert slot["action"] == "done", slot
    assert code == 0
    s.step()
    assert where(cluster)["etl-0"] == node  # the leader did the same: not moved
    s.lock.step_down()


def test_the_plan_counts_a_failed_nodes_grace_from_when_the_leader_saw_it(cluster):
    """With fencing the leader holds a failed node's work for the down grace, counted from
    when it first saw the node failed. The plan used to count it from its own "now", so it
    said "held" for as long as the node stayed down; the leader now publishes since when it
    sees each node failed (walle/config/presence) and the plan counts from there."""
    clock = Clock()
    s, _ = make_scheduler(cluster, clock, node_down_grace=15)
    s.publish_defaults()
    store = StateStore(cluster)
    assert store.put_job(load_spec_file(WEB), 0)
    s.step()
    s.step()
    lost = next(key for key, node in where(cluster).items() if node == "node2")
    register_node(cluster, "node2", "10.77.250.12", status="critical", zone="z2")
    s.step()  # the leader sees node2 failed now: its grace starts
    defaults, _ = published_defaults(store)

    def decision(at: float) -> str:
        run = dry_run(load_snapshot(cluster, store), defaults, at,
                      memory=published_presence(store))
        return next(d.action for d in run.jobs[0].slots if d.instance == lost)

    assert decision(clock.now + 5) == "held"  # within the leader's grace
    assert decision(clock.now + 20) == "refused"  # past it: the leader would move it now
    s.lock.step_down()


def test_an_lxc_job_with_no_node_able_to_run_lxc_is_refused_with_the_reason(cluster, capsys,
                                                                            tmp_path):
    """The runtime's implicit constraint, as `walle plan --explain` says it: node1 measured
    that it cannot run lxc (runtime_lxc=false, a lab node), the others say nothing."""
    register_node(cluster, "node1", "10.77.0.11",
                  meta={"walle_label_runtime_lxc": "false", "walle_label_runtime_nspawn": "false"})
    spec = tmp_path / "boxed.yml"
    spec.write_text("name: boxed\nkind: service\ncount: 1\nresources: {cpu: 0.1, memory: 32M}\n"
                    "runtime: {type: lxc, image: 'tiny:1.0', command: /bin/sh}\n")
    code, out, _ = walle(capsys, cluster, "plan", str(spec), "--explain")
    assert code == 1, out
    assert "3 nodes: runtime lxc: node cannot run lxc containers (no label runtime_lxc=true" \
        in out, out
    register_node(cluster, "node2", "10.77.0.12", meta={"walle_label_runtime_lxc": "true"})
    code, out, _ = walle(capsys, cluster, "plan", str(spec), "--json")
    (job,) = json.loads(out)["jobs"]
    assert code == 0 and [(d["action"], d["node"]) for d in job["slots"]] == [("place", "node2")]
