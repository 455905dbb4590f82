"""The whole system in the lab: real systemd nodes, Serf, the Consul stand-in, two scheduler
instances and the placement playbooks. Each test leaves the pool converged for the next.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.resolver
import pytest

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.adapters.runner import REPO_ROOT, ansible_env, run_command
from walle.cli.demo import provision, start_schedulers, submit
from walle.cli.main import main as walle_main
from walle.jobspec import parse_spec
from walle.lab.nodes import Lab
from walle.service.cluster import load_snapshot

pytestmark = pytest.mark.lab

CONVERGE_S = 120.0


def api_spec(count: int = 3, port: int = 8080, listen: int | None = None,
             health_timeout: str = "30s", name: str = "api", **extra):
    """A small HTTP service: no distinct_hosts, so lost instances can land anywhere. `listen`
    other than `port` makes a version whose check can never pass."""
    return parse_spec({
        "name": name, "kind": "service", "count": count, "strategy": "spread",
        "resources": {"cpu": "0.05-0.2", "memory": "16M-64M"},
        "runtime": {"command": "/usr/bin/python3",
                    "args": ["-m", "http.server", str(listen or port)],
                    "user": "nobody", "working_dir": "/tmp"},
        "health": {"type": "http", "path": "/", "port": port, "interval": "1s",
                   "timeout": "1s"},
        "stop": {"timeout": "5s", "pre_stop": ["/bin/sh", "-c", "echo stopping"]},
        "service": {"port": port},
        "update": {"max_parallel": 1, "health_timeout": health_timeout},
        **extra,
    })


class Pool:
    def __init__(self, lab: Lab, addr: str):
        self.lab = lab
        self.api = ConsulApi(ConsulConfig.from_env(addr=addr))
        self.store = StateStore(self.api)

    def snapshot(self):
        return load_snapshot(self.api, self.store)

    def records(self, job: str = "api") -> dict:
        return {k: r for k, r in self.snapshot().records.items() if r.alloc.job == job}

    def wait(self, what: str, predicate: Callable[[], object], timeout: float = CONVERGE_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.3)
        where = {k: (r.alloc.node, r.alloc.state, getattr(r.alloc, "reason", ""))
                 for k, r in self.snapshot().records.items()}
        logs = "".join(f"\n--- {log.name}:\n" + log.read_text(errors="replace")[-3000:]
                       for log in sorted(self.lab.dir.glob("scheduler-*.log")))
        raise AssertionError(f"{what}: not within {timeout:.0f}s; records: {where}{logs}")

    def converged(self, job: str, count: int) -> bool:
        recs = self.records(job)
        return len(recs) == count and all(
            r.alloc.state == "running" and r.previous is None for r in recs.values())

    def active_units(self, job: str = "api") -> dict[str, list[str]]:
        """node -> the job's service units systemd reports active there (ground truth)."""
        out = run_command(str(self.lab.inventory_path), "walle_nodes",
                          ["systemctl", "list-units", "--state=active", "--plain",
                           "--no-legend", f"walle-{job}-*.service"])
        return {h: sorted(line.split()[0] for line in r.stdout.splitlines() if line.strip())
                for h, r in out.items()}

    def main_pids(self, job: str = "api") -> dict[str, str]:
        pids = {}
        for key, r in self.records(job).items():
            unit = f"walle-{job}-{r.alloc.slot}.service"
            out = run_command(str(self.lab.inventory_path), [r.alloc.node],
                              ["systemctl", "show", unit, "-p", "MainPID", "--value"])
            pids[key] = out[r.alloc.node].stdout.strip()
        return pids

    def dns_nodes(self, name: str = "api") -> set[str]:
        host, port = self.lab.consul_dns_addr
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = [host], port, 2.0
        try:
            answer = resolver.resolve(f"{name}.service.consul", "SRV")
        except dns.resolver.NXDOMAIN:
            return set()
        return {r.target.to_text().split(".")[0] for r in answer}

    def scheduler_pids(self) -> dict[str, int]:
        return {k: v for k, v in self.lab.state.processes.items() if k.startswith("scheduler")}

    def leader_name(self) -> str | None:
        _, entry = self.api.client.kv.get("walle/leader")
        if not entry or not entry.get("Session"):
            return None
        return (entry.get("Value") or b"").decode()


@contextlib.contextmanager
def running_pool(prefix: str, schedulers: int = 2, nodes: int = 3, vm_nodes: int = 0,
                 progress: Callable[[str], None] = lambda msg: None) -> Iterator[Pool]:
    """A provisioned lab of `nodes` nspawn nodes (and `vm_nodes` VM nodes after them) with its
    Consul and `schedulers` scheduler processes, removed at the end (from the lab's recorded
    state: nodes added meanwhile go too)."""
    lab = Lab(f"{prefix}{os.getpid()}", progress=progress)
    try:
        lab.up(nodes, vm_nodes=vm_nodes)
        addr = lab.start_consul()
        assert provision(lab) == 0
        start_schedulers(lab, addr, count=schedulers)
        p = Pool(lab, addr)
        p.wait("nodes in the catalog",
               lambda: len(p.snapshot().nodes) == nodes + vm_nodes, 30 + 60 * vm_nodes)
        yield p
    finally:
        lab.down()


@pytest.fixture(scope="module")
def pool():
    with running_pool("s") as p:
        yield p


def test_a_second_site_yml_run_changes_nothing(pool):
    env = {**os.environ, **ansible_env()}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i",
         str(pool.lab.inventory_path), str(REPO_ROOT / "site.yml")],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:]
    recap = re.findall(r"^(node\d+)\s+: ok=\d+\s+changed=(\d+)", proc.stdout, re.MULTILINE)
    assert sorted(recap) == [("node1", "0"), ("node2", "0"), ("node3", "0")], proc.stdout[-2000:]
    # and the nodes are in the catalog with their resources as node meta
    meta = {n.name: n.capacity for n in pool.snapshot().nodes.values()}
    assert set(meta) == {"node1", "node2", "node3"}
    assert all(c.cpu > 0 and c.memory > 0 for c in meta.values())


def test_run_places_instances_spread_and_findable_by_dns(pool):
    spec = api_spec()
    submit(pool.store, spec)
    pool.wait("3 instances running", lambda: pool.converged("api", 3))
    nodes = {r.alloc.node for r in pool.records().values()}
    assert nodes == {"node1", "node2", "node3"}  # spread over the three zones
    pool.wait("DNS answers every node", lambda: pool.dns_nodes() == nodes, 15)
    units = pool.active_units()
    assert sum(len(u) for u in units.values()) == 3


def test_scale_down_and_up(pool):
    submit(pool.store, api_spec(count=1))
    pool.wait("1 running", lambda: pool.converged("api", 1))
    pool.wait("2 units gone", lambda: sum(len(u) for u in pool.active_units().values()) == 1)
    assert sorted(pool.records()) == ["api-0"]
    submit(pool.store, api_spec(count=3))
    pool.wait("3 running", lambda: pool.converged("api", 3))
    assert sum(len(u) for u in pool.active_units().values()) == 3


def test_failing_update_rolls_back_and_healthy_instances_keep_running(pool):
    good = api_spec()
    before = pool.main_pids()
    current = pool.store.job("api")
    # a version that listens on the wrong port: its check never passes
    bad = api_spec(listen=9999, health_timeout="8s")
    assert pool.store.put_job(bad, current.modify_index, previous=current)
    pool.wait("rolled back", lambda: pool.store.job("api").version == good.digest(), 90)
    pool.wait("converged on the good version", lambda: pool.converged("api", 3) and {
        r.alloc.spec_digest for r in pool.records().values()} == {good.digest()})
    after = pool.main_pids()
    # max_parallel 1: only one instance was ever replaced; the others never restarted
    assert sum(before[k] == after[k] for k in before) >= 2


def test_drain_moves_instances_off_the_node(pool):
    submit(pool.store, api_spec(count=2))  # a free node to move to (one port per node)
    pool.wait("2 running", lambda: pool.converged("api", 2))
    victim = pool.records()["api-0"].alloc.node
    pool.api.client.kv.put(f"walle/nodes/{victim}/drain", "drain")
    try:
        pool.wait("nothing on the drained node", lambda: pool.converged("api", 2) and all(
            r.alloc.node != victim for r in pool.records().values()))
        pool.wait("no unit left there", lambda: pool.active_units()[victim] == [])
    finally:
        pool.api.client.kv.delete(f"walle/nodes/{victim}/drain")


def test_a_failing_instance_leaves_dns_then_is_healed(pool):
    submit(pool.store, api_spec(count=2))
    pool.wait("2 running", lambda: pool.converged("api", 2))
    node = pool.records()["api-0"].alloc.node
    pool.wait("DNS lists both", lambda: node in pool.dns_nodes(), 15)
    # stopped by hand: systemd will not restart it, its check turns critical
    run_command(str(pool.lab.inventory_path), [node],
                ["systemctl", "stop", "walle-api-0.service"])
    pool.wait("the critical instance leaves DNS", lambda: node not in pool.dns_nodes(), 15)
    # after the grace period the leader places it again, away from the node it failed on
    pool.wait("healed elsewhere", lambda: pool.converged("api", 2)
              and pool.records()["api-0"].alloc.node != node, 90)
    assert len(pool.dns_nodes()) == 2


def test_a_batch_job_runs_to_completion_once(pool):
    spec = parse_spec({"name": "etl", "kind": "batch", "count": 2, "retries": 1,
                       "resources": {"cpu": 0.05, "memory": "16M"},
                       "runtime": {"command": "/bin/sh",
                                   "args": ["-c", "echo crunching; sleep 2"]}})
    submit(pool.store, spec)
    pool.wait("both instances finished", lambda: (recs := pool.records("etl")) and len(recs) == 2
              and all(r.alloc.state == "stopped" for r in recs.values()), 90)
    out = run_command(str(pool.lab.inventory_path), "walle_nodes",
                      ["journalctl", "--no-pager", "-u", "walle-etl-*", "-g", "crunching"])
    assert sum(r.stdout.count("crunching") for r in out.values()) == 2  # each ran once


def test_killing_the_leader_scheduler_hands_over_without_duplicates(pool):
    leader = pool.wait("a leader", pool.leader_name, 30)
    pids = pool.scheduler_pids()
    key = next(k for k in pids if leader.endswith(k))
    os.kill(pids[key], signal.SIGKILL)
    pool.wait("the standby leads", lambda: pool.leader_name() not in (None, leader), 60)
    submit(pool.store, api_spec(count=2))
    pool.wait("2 running under the new leader", lambda: pool.converged("api", 2))
    units = pool.active_units()
    assert sum(len(u) for u in units.values()) == 2
    names = [u for us in units.values() for u in us]
    assert len(names) == len(set(names))  # never two instances of one slot
    start_schedulers(pool.lab, pool.lab.consul_http_addr)  # the killed one comes back


def test_every_scheduler_killed_mid_playbook_loses_and_duplicates_nothing(pool):
    submit(pool.store, api_spec(count=3))
    pool.wait("3 running", lambda: pool.converged("api", 3))
    before = pool.main_pids()
    # a second job; kill every scheduler once its placement is under way
    web = api_spec(count=3, port=8081, name="web2")
    submit(pool.store, web)
    pool.wait("web2 placement started", lambda: pool.records("web2"), 30)
    for pid in pool.scheduler_pids().values():
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    start_schedulers(pool.lab, pool.lab.consul_http_addr)
    pool.wait("web2 converged", lambda: pool.converged("web2", 3))
    pool.wait("api still converged", lambda: pool.converged("api", 3))
    assert pool.main_pids() == before  # adopted, not restarted
    units = pool.active_units("web2")
    assert sum(len(u) for u in units.values()) == 3


def test_after_walle_state_is_wiped_the_resubmitted_job_adopts_what_runs(pool):
    """Disaster recovery: `walle/` in KV is lost while the jobs run and every scheduler
    restarts; the jobs are submitted again. The instances found running are adopted: each keeps
    its process (MainPID) and node, and there are exactly `count` of them."""
    submit(pool.store, api_spec(count=3))
    pool.wait("3 running", lambda: pool.converged("api", 3))
    specs = {name: spec for name, j in pool.store.jobs()[1].items()
             if (spec := parse_spec(dict(j.spec))).kind == "service"}
    for name, spec in specs.items():  # whatever services earlier tests left running too
        pool.wait(f"{name} converged", lambda n=name, c=spec.count: pool.converged(n, c))
    where = {k: r.alloc.node for name in specs for k, r in pool.records(name).items()}
    before = {name: pool.main_pids(name) for name in specs}
    manifests = run_command(str(pool.lab.inventory_path), "walle_nodes", [
        "find", "/var/lib/walle/instances", "-name", "*.json", "-perm", "0600"])
    # (finished batch instances keep theirs until their job is stopped: exactly-once needs it)
    assert sorted(name for r in manifests.values() for line in r.stdout.split()
                  if (name := line.rsplit("/", 1)[1]).rsplit("-", 1)[0] in specs) == [
        f"{k}.json" for k in sorted(where)]

    pool.api.client.kv.delete("walle/", recurse=True)  # lost while everything runs
    for pid in pool.scheduler_pids().values():
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    start_schedulers(pool.lab, pool.lab.consul_http_addr)
    pool.wait("a new leader", pool.leader_name, 60)
    time.sleep(3)  # the leader passes over instances of jobs it does not know: kept
    assert sum(len(u) for u in pool.active_units().values()) == 3

    for spec in specs.values():
        submit(pool.store, spec)
    for name, spec in specs.items():
        pool.wait(f"{name} converged again",
                  lambda n=name, c=spec.count: pool.converged(n, c))
        assert pool.main_pids(name) == before[name]  # adopted, not restarted
        assert sum(len(u) for u in pool.active_units(name).values()) == spec.count
    assert {k: r.alloc.node for name in specs for k, r in pool.records(name).items()} == where


def walle_json(pool, *argv):
    """`walle ARGV --json` against the lab's Consul, in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = walle_main([*argv, "--json", "--consul-addr", pool.lab.consul_http_addr])
    assert code == 0, argv
    return json.loads(out.getvalue())


def test_a_lost_instance_with_nowhere_to_go_says_why_in_status_and_events(pool):
    """Issue 10's scenario: every node holds one instance (distinct_hosts, a static port), a
    node dies: the slot is `lost`, and status and events say why it does not move."""
    spec = api_spec(count=3, port=8090, name="web",
                    constraints=[{"operator": "distinct_hosts"}])
    submit(pool.store, spec)
    pool.wait("web running", lambda: pool.converged("web", 3))
    victim = pool.records("web")["web-1"].alloc.node
    pool.lab.kill_node(victim)
    try:
        def lost() -> dict | None:
            rows = {r["instance"]: r for r in walle_json(pool, "status", "web")}
            return rows["web-1"] if rows["web-1"]["state"] == "lost" \
                and "no feasible node" in (rows["web-1"]["reason"] or "") else None

        row = pool.wait("web-1 lost, with why", lost, 60)
        assert f"node {victim} down since" in row["reason"]
        assert "distinct_hosts" in row["reason"] and "port 8090 in use" in row["reason"]
        story = [r["event"] for r in walle_json(pool, "events", "web") if r["slot"] == 1]
        assert story[:2] == ["placed", "running"]
        assert story.index("lost") < story.index("cannot place")  # checks may fail around it
    finally:
        pool.lab.restart_node(victim)
        pool.wait("the node is back", lambda: pool.snapshot().nodes.get(victim) is not None
                  and pool.snapshot().nodes[victim].state != "down", 90)
    pool.wait("web-1 running again", lambda: pool.converged("web", 3), 90)
    pool.store.delete_job("web", pool.store.job("web").modify_index)
    pool.wait("web stopped", lambda: not pool.records("web"), 60)


def test_killing_a_node_moves_its_instances_and_dns_follows(pool):
    submit(pool.store, api_spec(count=2))  # a free node to move to (one port per node)
    pool.wait("2 running", lambda: pool.converged("api", 2))
    recs = pool.records()
    victim = recs["api-1"].alloc.node
    lost = sorted(k for k, r in recs.items() if r.alloc.node == victim)
    pool.lab.kill_node(victim)
    pool.wait("instances moved", lambda: pool.converged("api", 2) and all(
        r.alloc.node != victim for r in pool.records().values()), 90)
    pool.wait("DNS no longer answers the dead node", lambda: victim not in pool.dns_nodes()
              and len(pool.dns_nodes()) >= 1, 15)
    moved = {k: pool.records()[k].alloc.node for k in lost}
    assert all(node != victim for node in moved.values())


def test_a_cron_copy_on_a_node_that_comes_back_is_stopped(pool):
    """Chaos finding 4: the node holding a cron slot dies, the slot moves, the node boots
    again. Cron registers nothing in Consul, so only asking the node shows its copy: the
    leader stops it (timer inactive, units and manifest removed) and keeps the moved one."""
    spec = parse_spec({"name": "tick", "kind": "cron", "count": 1,
                       "schedule": "*-*-* *:*:00",
                       "resources": {"cpu": 0.05, "memory": "16M"},
                       "runtime": {"command": "/bin/true"}})
    submit(pool.store, spec)
    pool.wait("tick running", lambda: pool.converged("tick", 1))
    victim = pool.records("tick")["tick-0"].alloc.node
    pool.lab.kill_node(victim)
    pool.wait("tick moved", lambda: pool.converged("tick", 1)
              and pool.records("tick")["tick-0"].alloc.node != victim, 90)
    moved_to = pool.records("tick")["tick-0"].alloc.node
    pool.lab.restart_node(victim)
    pool.wait("the node is back", lambda: pool.snapshot().nodes.get(victim) is not None
              and pool.snapshot().nodes[victim].state != "down", 90)

    def copy_on(node: str) -> str:
        script = "ls /var/lib/walle/instances; systemctl is-active walle-tick-0.timer; true"
        out = run_command(str(pool.lab.inventory_path), [node], ["sh", "-c", script])
        return out[node].stdout if node in out else "no answer"

    pool.wait("the returning node's copy is removed",
              lambda: "tick-0.json" not in copy_on(victim)
              and "\nactive" not in "\n" + copy_on(victim), 60)
    assert pool.records("tick")["tick-0"].alloc.node == moved_to
    assert "tick-0.json" in copy_on(moved_to)
    pool.store.delete_job("tick", pool.store.job("tick").modify_index)


def cron_spec(name: str, script: str, **extra):
    """A cron job every 5 s (to the second: AccuracySec=1s) running a fixed shell script."""
    return parse_spec({"name": name, "kind": "cron", "count": 1, "schedule": "*:*:0/5",
                       "resources": {"cpu": 0.05, "memory": "16M"},
                       "runtime": {"command": "/bin/sh", "args": ["-c", script]},
                       "stop": {"timeout": "5s"}, **extra})


def test_cron_runs_fire_are_retried_within_bounds_and_are_read_back(pool):
    """Issue 13 item 5: timers that fire, retries honoured and bounded, concurrency: replace
    and allow, and every attempt's exit read back through `walle status` (the node's hook
    wrote it); stopping the jobs ends every run."""
    # fails (3) on one attempt and succeeds (0) on the next: its state dir remembers
    flaky = cron_spec("flaky", 'if [ -e "$STATE_DIRECTORY/failed" ]; then '
                               'rm "$STATE_DIRECTORY/failed"; exit 0; fi; '
                               'touch "$STATE_DIRECTORY/failed"; exit 3', retries=1)
    broken = cron_spec("broken", "exit 7", retries=1)  # 2 attempts per run, then the next run
    slow = cron_spec("slow", "sleep 8", retries=0, concurrency="replace")  # never finishes
    # a run every 5 s that lasts 8 s: runs side by side, each its own unit in the slot's slice
    overlap = cron_spec("overlap", "sleep 8", retries=0,
                        concurrency={"policy": "allow", "max": 3})
    jobs = (flaky, broken, slow, overlap)
    for spec in jobs:
        submit(pool.store, spec)
    for spec in jobs:  # one place.yml for the four: 80 s of it at load 40 on 2 cores
        pool.wait(f"{spec.name} timer active", lambda s=spec: pool.converged(s.name, 1), 240)

    def runs(job: str) -> list[dict]:
        (row,) = walle_json(pool, "status", job)
        return row["runs"]

    def enough(job: str, check: Callable[[list[dict]], bool]) -> Callable[[], list | None]:
        return lambda: (lambda r: r if check(r) else None)(runs(job))

    def exits(r: list[dict]) -> list[tuple[int, str, bool]]:
        return [(x["attempt"], x["exit_status"], x["retry"]) for x in r]

    # flaky: at least two runs (the timer fired twice), each a failed attempt retried and a
    # successful retry, both exit codes read back
    got = pool.wait("flaky ran twice", enough("flaky", lambda r: exits(r).count(
        (2, "0", False)) >= 2), 120)
    first = exits(got).index((1, "3", True))
    assert (2, "0", False) in exits(got)[first:]
    assert all(x["node"] == pool.records("flaky")["flaky-0"].alloc.node for x in got)
    assert all(x["start"] <= x["end"] for x in got)
    # broken: attempt 2 is the last (retries 1), and the timer still starts the next run
    got = pool.wait("broken ran twice", enough("broken", lambda r: exits(r).count(
        (2, "7", False)) >= 1 and exits(r)[-1][0] == 1 and len(r) >= 3), 120)
    assert max(a for a, _, _ in exits(got)) == 2
    assert exits(got)[exits(got).index((2, "7", False)) - 1] == (1, "7", True)
    # slow: each run is stopped by the next one (replace), so none ever exits by itself
    got = pool.wait("slow replaced twice", enough("slow", lambda r: len(r) >= 2), 120)
    assert all((x["exit_code"], x["exit_status"]) == ("killed", "TERM") for x in got), got
    assert not any(x["retry"] for x in got)

    # overlap: two runs (distinct run ids) that ran at the same time, both to their end
    def side_by_side(r: list[dict]) -> bool:
        done = [x for x in r if x.get("run") and x["exit_status"] == "0"]
        return any(a["run"] != b["run"] and a["start"] < b["start"] < a["end"]
                   for a in done for b in done)
    got = pool.wait("overlap ran two runs at once", enough("overlap", side_by_side), 120)
    assert len({x["run"] for x in got}) == len(got)  # no retries: one attempt per run
    node = pool.records("overlap")["overlap-0"].alloc.node

    def overlap_runs() -> list[str]:
        out = run_command(str(pool.lab.inventory_path), [node],
                          ["systemctl", "list-units", "--plain", "--no-legend",
                           "--state=activating,active,deactivating", "walle-overlap-0@*"])
        return [line.split()[0] for line in out[node].stdout.splitlines() if line.strip()]
    assert pool.wait("a run going", overlap_runs, 15)
    for spec in jobs:
        pool.store.delete_job(spec.name, pool.store.job(spec.name).modify_index)
    for spec in jobs:
        pool.wait(f"{spec.name} stopped", lambda s=spec: not pool.records(s.name), 60)
    assert overlap_runs() == []  # the stop ended every run, not only the timer


def test_cpu_load_scales_a_service_up_then_down_after_the_cooldown(pool):
    """Issue 13 item 4: instances that burn CPU (until a fixed moment) push the mean use over
    the target: the leader raises the count (read from walle-exporter); once the load stops
    the count falls back to min after the cooldown. Every change is an event with the value."""
    burn_until = time.time() + 100
    spin = (f"import time; end = {burn_until:.0f}; "
            "[None for _ in iter(lambda: time.time() < end, False)]; time.sleep(86400)")
    spec = parse_spec({
        "name": "burn", "kind": "service", "count": 1,
        "resources": {"cpu": "0.05-0.2", "memory": "16M-64M"},
        "runtime": {"command": "/usr/bin/python3", "args": ["-c", spin], "user": "nobody"},
        "stop": {"timeout": "5s"},
        "scaling": {"min": 1, "max": 3, "metric": "cpu", "target": 50, "cooldown": "20s"}})
    submitted = time.time()
    submit(pool.store, spec)

    def count() -> int:
        return pool.store.job("burn").spec["count"]

    pool.wait("the count rises under load", lambda: count() >= 2, 150)
    risen_at = time.time()
    assert time.time() < burn_until, "rose only after the load stopped"
    pool.wait("the count falls back to min", lambda: count() == 1,
              burn_until - time.time() + 150)
    assert time.time() - risen_at >= 20  # not before the cooldown
    story = [e for e in walle_json(pool, "events", "burn") if e["event"] == "autoscaled"]
    assert "count 1 -> " in story[0]["message"] and "cpu % of resources.cpu max" \
        in story[0]["message"]
    assert story[-1]["message"].split(":")[0].endswith("-> 1")
    ups = [e for e in pool.store.events("burn")[1]["burn"][0]["events"]
           if e["event"] == "autoscaled"]
    print(f"figure: autoscaler, submit -> first rise {ups[0]['time'] - submitted:.1f}s; "
          f"load stopped -> back to min {ups[-1]['time'] - burn_until:.1f}s "
          f"(cooldown 20s, interval 15s)")
    pool.wait("one instance left", lambda: pool.converged("burn", 1), 90)
    pool.store.delete_job("burn", pool.store.job("burn").modify_index)
    pool.wait("burn stopped", lambda: not pool.records("burn"), 60)


def test_two_instances_with_a_dynamic_port_share_one_node(pool):
    """Dynamic ports (issue 11): two instances of one job on one node, each on its own port
    of the node's range (its program binds ${WALLE_PORT_HTTP}, which systemd substitutes),
    both pass their checks, and DNS SRV answers both ports."""
    spec = parse_spec({
        "name": "dyn", "kind": "service", "count": 2,
        "resources": {"cpu": "0.05-0.2", "memory": "16M-64M"},
        "runtime": {"command": "/usr/bin/python3",
                    "args": ["-m", "http.server", "${WALLE_PORT_HTTP}"],
                    "user": "nobody", "working_dir": "/tmp"},
        "constraints": [{"attribute": "name", "operator": "eq", "value": "node1"}],
        "ports": [{"label": "http"}],
        "health": {"type": "http", "path": "/", "port": "http", "interval": "1s",
                   "timeout": "1s"},
        "service": {"port": "http"},
    })
    submit(pool.store, spec)
    pool.wait("both instances running on node1", lambda: pool.converged("dyn", 2), 180)
    recs = pool.records("dyn")
    assert {r.alloc.node for r in recs.values()} == {"node1"}
    ports = sorted(dict(r.alloc.dynamic_ports)["http"] for r in recs.values())
    assert len(set(ports)) == 2 and all(20000 <= p <= 32000 for p in ports)
    host, port = pool.lab.consul_dns_addr
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [host], port, 2.0

    def srv() -> list[tuple[str, int]]:
        try:
            answer = resolver.resolve("dyn.service.consul", "SRV", tcp=True)
        except dns.resolver.NXDOMAIN:
            return []
        return sorted((r.target.to_text().split(".")[0], r.port) for r in answer)

    pool.wait("DNS SRV answers both ports", lambda: srv() == [("node1", p) for p in ports], 30)
    pool.store.delete_job("dyn", pool.store.job("dyn").modify_index)
    pool.wait("dyn stopped", lambda: not pool.records("dyn"), 60)
