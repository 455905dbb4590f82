"""Failover benchmark of the scheduler service in the lab (prints figures; not a test).

    sudo .venv/bin/python bench/failover.py [--trials N] [--nodes 3] [--keep]

Builds its own lab (`bench`), starts Consul (stand-in + Serf), provisions it with site.yml and
runs two schedulers, then measures, over N trials each:
  run      `walle run` (StateStore.put_job) of a 3-instance service -> all instances passing
           in Consul, and -> DNS SRV answering all of them.
  node     hard kill (SIGKILL of nspawn + init) of a node running instances; phases:
           detection  kill -> the node's serfHealth critical
           planning   detection -> every lost slot's KV record names a new node (pending)
           playbook   planning -> every moved instance registered in Consul on its new node
           health     registered -> every moved instance passing
           dns        passing -> the SRV answer lists every instance, none on the dead node
           total      detection -> all lost instances passing elsewhere (target <= 3 s)
  leader   schedulers whose leader sessions are bound to two lab nodes; kill the leader's
           node and time the new leader (lock key names another session) and its first act
           (a lost slot re-planned) and all lost instances passing again.
Every poll loop runs every ~50 ms and is bounded (--trial-timeout). The lab is removed in a
`finally` unless --keep. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.resolver
import requests
import yaml

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.adapters.runner import REPO_ROOT, ansible_env
from walle.cli.demo import provision
from walle.jobspec import parse_spec
from walle.lab.nodes import Lab
from walle.naming import instance_id, job_allocs_prefix, parse_alloc_key, service_unit
from walle.service.jobs import submit

POLL = 0.05
JOB = "fover"  # the service the node and leader trials kill and heal


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----- pure helpers -------------------------------------------------------------------------
def service_spec(name: str, count: int, check_interval: str):
    """examples/web.yml renamed: every instance has its own dynamic port, so several such
    services, and several instances of one, share the nodes (see bench/README.md)."""
    data = yaml.safe_load((REPO_ROOT / "examples" / "web.yml").read_text())
    data.update(name=name, count=count)
    data["health"].update(interval=check_interval)
    data["service"].update(name=name)
    return parse_spec(data, source=f"bench {name}")


def srv_node(target: str) -> str:
    """Node named by an SRV target: `<node>.node.<dc>.consul.` or `<hex ip>.addr...`."""
    label, kind = target.split(".")[:2]
    if kind == "addr":
        return ".".join(str(b) for b in bytes.fromhex(label))
    return label


def spread(values: list[float]) -> str:
    if not values:
        return "      -      -      -"
    return f"{statistics.median(values):7.2f}{min(values):7.2f}{max(values):7.2f}"


def print_table(title: str, rows: list[tuple[str, list[float], str]]) -> None:
    print(f"\n{title}")
    print(f"  {'figure':<56}{'median':>7}{'min':>7}{'max':>7}  n  note")
    for name, values, note in rows:
        print(f"  {name:<56}{spread(values)}  {len(values)}  {note}")


# ----- reading the cluster (thin adapter over the lab's Consul API and DNS) -------------------
class Probe:
    def __init__(self, lab: Lab):
        self.http = lab.consul_http_addr
        self.session = requests.Session()
        host, port = lab.consul_dns_addr
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers, self.resolver.port = [host], port
        self.resolver.lifetime = 1.0
        self.addr_to_node = {n.address: n.name for n in lab.nodes}

    def get(self, path: str, **params):
        answer = self.session.get(self.http + path, params=params, timeout=3)
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.json()

    def serf_status(self, node: str) -> str:
        checks = self.get(f"/v1/health/node/{node}") or []
        return next((c["Status"] for c in checks if c["CheckID"] == "serfHealth"), "missing")

    def records(self, job: str) -> dict[int, tuple[str, str]]:
        """slot -> (node, state) from walle/allocs/<job>/<slot>."""
        out = {}
        for entry in self.get(f"/v1/kv/{job_allocs_prefix(job)}", recurse="true") or []:
            parsed = parse_alloc_key(entry["Key"])
            if parsed is not None:
                body = json.loads(base64.b64decode(entry["Value"] or b"e30="))
                out[parsed[1]] = (body.get("node"), body.get("state"))
        return out

    def instances(self, service: str, passing: bool) -> set[tuple[str, str]]:
        """(node, service ID) of the service's registered (or passing) instances."""
        params = {"passing": "true"} if passing else {}
        rows = self.get(f"/v1/health/service/{service}", **params) or []
        return {(r["Node"]["Node"], r["Service"]["ID"]) for r in rows}

    def dns_nodes(self, service: str) -> Counter:
        try:
            answer = self.resolver.resolve(f"{service}.service.consul", "SRV", tcp=True)
        except dns.exception.DNSException:  # NXDOMAIN when none passes; retried by the poll
            return Counter()
        nodes = (srv_node(r.target.to_text()) for r in answer)
        return Counter(self.addr_to_node.get(n, n) for n in nodes)

    def leader(self) -> tuple[str | None, str | None]:
        """(session ID, the session's node) holding walle/leader."""
        entries = self.get("/v1/kv/walle/leader") or []
        sid = entries[0].get("Session") if entries else None
        if not sid:
            return None, None
        info = self.get(f"/v1/session/info/{sid}") or []
        return sid, (info[0].get("Node") if info else None)


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> float | None:
    """Poll `condition` every POLL seconds; seconds it took, or None after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(requests.RequestException):
            if condition():
                return time.monotonic() - start
        time.sleep(POLL)
    log(f"timed out after {timeout:.0f}s waiting for {what}")
    return None


def converged(probe: Probe, job: str, count: int) -> bool:
    """Every slot running, every instance passing on its record's node, DNS answering each."""
    records = probe.records(job)
    if len(records) != count or any(state != "running" for _, state in records.values()):
        return False
    expected = {(node, instance_id(job, slot)) for slot, (node, _) in records.items()}
    if probe.instances(job, passing=True) != expected:
        return False
    return set(probe.dns_nodes(job)) == {node for node, _ in records.values()}


# ----- one failover trial ------------------------------------------------------------------
@dataclass
class FailoverTrial:
    victim: str
    lost: list[int]
    kill: float = 0.0
    detected: float | None = None
    planned: dict[int, float] = field(default_factory=dict)
    registered: dict[int, float] = field(default_factory=dict)
    passing: dict[int, float] = field(default_factory=dict)
    dns: float | None = None
    new_leader: float | None = None
    orphan: str = ""

    @property
    def complete(self) -> bool:
        return self.detected is not None and len(self.passing) == len(self.lost) \
            and (self.dns is not None or not self.lost)

    def phases(self) -> dict[str, float]:
        """Phase -> seconds, for the phases whose both ends were seen (all lost slots)."""
        def last(seen: dict[int, float]) -> float | None:
            return max(seen.values()) if self.lost and len(seen) == len(self.lost) else None

        marks = {"kill": self.kill, "detected": self.detected, "planned": last(self.planned),
                 "registered": last(self.registered), "passing": last(self.passing),
                 "dns": self.dns}
        spans = {"detection": ("kill", "detected"), "planning": ("detected", "planned"),
                 "playbook": ("planned", "registered"), "health": ("registered", "passing"),
                 "dns": ("passing", "dns"), "total": ("detected", "passing"),
                 "total_dns": ("detected", "dns"), "kill_to_passing": ("kill", "passing")}
        return {k: marks[b] - marks[a] for k, (a, b) in spans.items()
                if marks[a] is not None and marks[b] is not None}


def observe(probe: Probe, trial: FailoverTrial, count: int, timeout: float,
            leader_sid: str | None = None) -> None:
    """Poll after the kill until every lost instance passes elsewhere and DNS agrees."""
    deadline = trial.kill + timeout
    while time.monotonic() < deadline and not trial.complete:
        try:
            step(probe, trial, count, leader_sid)
        except requests.RequestException as err:
            log(f"poll error (retrying): {err}")
        time.sleep(POLL)


def step(probe: Probe, trial: FailoverTrial, count: int, leader_sid: str | None) -> None:
    now = time.monotonic()
    if trial.detected is None and probe.serf_status(trial.victim) == "critical":
        trial.detected = now
    if leader_sid is not None and trial.new_leader is None:
        sid, _ = probe.leader()
        if sid and sid != leader_sid:
            trial.new_leader = now
    records = probe.records(JOB)
    moved = {s: records[s][0] for s in trial.lost
             if s in records and records[s][0] != trial.victim}
    for slot in moved:
        trial.planned.setdefault(slot, now)
    registered = probe.instances(JOB, passing=False)
    passing = probe.instances(JOB, passing=True)
    for slot, node in moved.items():
        if (node, instance_id(JOB, slot)) in registered:
            trial.registered.setdefault(slot, now)
        if (node, instance_id(JOB, slot)) in passing:
            trial.passing.setdefault(slot, now)
    if len(trial.passing) == len(trial.lost) and trial.dns is None:
        answer = probe.dns_nodes(JOB)
        want = {node for node, _ in records.values()}  # distinct_hosts: one per node
        if trial.victim not in answer and set(answer) == want and len(records) == count:
            trial.dns = now


# ----- the benchmark -----------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.lab = Lab(args.lab, progress=log)
        self.python_bin = Path(sys.executable).parent
        self.schedulers: dict[str, tuple[list[str], str]] = {}  # key -> (argv, log name)
        self.node_results: list[FailoverTrial] = []
        self.leader_results: list[FailoverTrial] = []

    def setup(self) -> None:
        t0 = time.monotonic()
        self.lab.up(self.args.nodes)
        self.addr = self.lab.start_consul()
        log("provisioning with site.yml ...")
        if provision(self.lab) != 0:
            raise SystemExit("site.yml failed")
        self.probe = Probe(self.lab)
        self.store = StateStore(ConsulApi(ConsulConfig.from_env(addr=self.addr)))
        nodes = [n.name for n in self.lab.nodes]
        if wait_for("every node's serfHealth passing", lambda: all(
                self.probe.serf_status(n) == "passing" for n in nodes), 60) is None:
            raise SystemExit("nodes did not join Serf")
        log(f"lab ready in {time.monotonic() - t0:.1f}s")

    def save_logs(self, dest: Path) -> None:
        """The lab's logs outlive the lab: scheduler-*.log are the evidence for the figures."""
        if not self.lab.dir.exists():
            return
        dest.mkdir(parents=True, exist_ok=True)
        for path in self.lab.dir.glob("*.log"):
            shutil.copy2(path, dest / path.name)
        log(f"logs copied to {dest}")

    # schedulers ------------------------------------------------------------------------
    def start_scheduler(self, key: str, session_node: str | None) -> None:
        argv = [str(self.python_bin / "walle"), "scheduler", "run",
                "--consul-addr", self.addr, "--inventory", str(self.lab.pool_inventory_path),
                "--node-consul-addr", self.addr, "--name", f"{self.lab.name}-{key}",
                "--lock-delay", str(self.args.lock_delay)]
        if session_node:
            argv += ["--session-node", session_node]
        self.schedulers[key] = (argv, f"{key}.log")
        self.lab.start_process(key, argv, f"{key}.log")

    def ensure_schedulers(self) -> None:
        """Restart a scheduler that exited (e.g. after its session node died)."""
        for key, (argv, log_name) in self.schedulers.items():
            pid = self.lab.state.processes.get(key)
            if pid and not _alive(pid):
                log(f"{key} (pid {pid}) had exited; restarting it (see {log_name})")
            self.lab.start_process(key, argv, log_name)

    def stop_schedulers(self) -> None:
        for key in list(self.schedulers):
            pid = self.lab.state.processes.get(key)
            if pid and _alive(pid):
                os.kill(pid, signal.SIGTERM)
                _wait_exit(pid, 15.0)
            self.schedulers.pop(key)

    # run --------------------------------------------------------------------------------
    def run_trials(self) -> dict[str, list[float]]:
        """Submit a new 3-instance service per trial (own name and port), time its way to
        passing and DNS, then stop it."""
        out: dict[str, list[float]] = {k: [] for k, _ in RUN_MARKS}
        count = min(3, self.args.nodes)
        for i in range(self.args.trials):
            name = f"brun{i}"
            spec = service_spec(name, count, self.args.check_interval)
            start = time.monotonic()
            submit(self.store, spec)
            seen = self.watch_run(name, count, start)
            log(f"run trial {i}: " + ", ".join(f"{k} {v:.2f}s" for k, v in seen.items()))
            for k, v in seen.items():
                out[k].append(v)
            self.stop_job(name)
        return out

    def watch_run(self, name: str, count: int, start: float) -> dict[str, float]:
        seen: dict[str, float] = {}
        while time.monotonic() - start < self.args.trial_timeout and "dns" not in seen:
            with contextlib.suppress(requests.RequestException):
                now = time.monotonic() - start
                records = self.probe.records(name)
                if len(records) == count:
                    seen.setdefault("planned", now)
                if len(self.probe.instances(name, passing=False)) == count:
                    seen.setdefault("registered", now)
                if len(self.probe.instances(name, passing=True)) == count:
                    seen.setdefault("passing", now)
                if "passing" in seen and converged(self.probe, name, count):
                    seen.setdefault("dns", now)
            time.sleep(POLL)
        return seen

    def stop_job(self, name: str) -> None:
        current = self.store.job(name)
        if current is not None:
            self.store.delete_job(name, current.modify_index)
        wait_for(f"{name} stopped", lambda: not self.probe.records(name)
                 and not self.probe.instances(name, passing=False), self.args.trial_timeout)

    # node failover -----------------------------------------------------------------------
    def node_trials(self) -> list[FailoverTrial]:
        trials = self.node_results
        for i in range(self.args.trials):
            if not self.settle():
                break
            victim, lost = self.pick_victim(i)
            trial = FailoverTrial(victim, lost)
            trials.append(trial)
            self.kill_and_observe(trial)
            self.recover(trial)
        return trials

    def pick_victim(self, i: int, among: list[str] | None = None) -> tuple[str, list[int]]:
        by_node: dict[str, list[int]] = {}
        for slot, (node, _) in sorted(self.probe.records(JOB).items()):
            by_node.setdefault(node, []).append(slot)
        nodes = sorted(n for n in by_node if among is None or n in among)
        if not nodes:  # a leader node that runs no instance: only the lock is measured
            return among[0], []
        victim = nodes[i % len(nodes)]
        return victim, by_node[victim]

    def kill_and_observe(self, trial: FailoverTrial, leader_sid: str | None = None) -> None:
        victim, lost = trial.victim, trial.lost
        log(f"killing {victim} (instances {lost}); load {_load()}")
        trial.kill = time.monotonic()
        self.lab.kill_node(victim)
        observe(self.probe, trial, self.args.count, self.args.trial_timeout, leader_sid)
        phases = trial.phases()
        log(f"{victim}: {'' if trial.complete else 'INCOMPLETE '}"
            + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()))

    def settle(self) -> bool:
        ok = wait_for(f"{JOB} all passing and in DNS",
                      lambda: converged(self.probe, JOB, self.args.count),
                      self.args.trial_timeout)
        return ok is not None

    def recover(self, trial: FailoverTrial) -> None:
        """Boot the node again, wait for Serf to see it, and look for the old instances."""
        t0 = time.monotonic()
        self.lab.restart_node(trial.victim)
        if wait_for(f"{trial.victim} serfHealth passing",
                    lambda: self.probe.serf_status(trial.victim) == "passing", 30) is None:
            log(f"re-running site.yml for {trial.victim} so its Serf rejoins")
            self.provision_limit(trial.victim)
        self.ensure_schedulers()
        trial.orphan = self.watch_orphans(trial)
        log(f"{trial.victim} back in {time.monotonic() - t0:.1f}s; orphans: "
            f"{trial.orphan or 'none'}")

    def provision_limit(self, node: str) -> None:
        subprocess.run([str(self.python_bin / "ansible-playbook"), "-i",
                        str(self.lab.inventory_path), "--limit", node,
                        str(REPO_ROOT / "site.yml")], cwd=REPO_ROOT, capture_output=True,
                       timeout=600, env={**os.environ, **ansible_env(), "WALLE_LAB": self.lab.name})

    def watch_orphans(self, trial: FailoverTrial, timeout: float = 30.0) -> str:
        """The returned node may bring back the lost instances' old registrations (and units):
        time how long until the scheduler's orphan reaper clears them; clear them ourselves
        after `timeout` so the next trial starts clean."""
        old = {instance_id(JOB, slot) for slot in trial.lost}

        def stale() -> set[str]:
            return {sid for node, sid in self.probe.instances(JOB, passing=False)
                    if node == trial.victim and sid in old}

        start, seen = time.monotonic(), set()
        while time.monotonic() - start < timeout:
            with contextlib.suppress(requests.RequestException):
                now = stale()
                seen |= now
                if seen and not now:
                    return (f"{','.join(sorted(seen))} registered again on {trial.victim}, "
                            f"reaped by the scheduler {time.monotonic() - start:.1f}s after "
                            "the node was back")
            if not seen and time.monotonic() - start > 5.0:
                break  # nothing came back within 5 s: the old registration was not kept
            time.sleep(POLL * 4)
        left = self.find_orphans(trial)
        if left:
            self.remove_orphans(trial)
            return f"NOT reaped within {timeout:.0f}s: {left} (removed by the bench)"
        return ""

    def find_orphans(self, trial: FailoverTrial) -> str:
        found = []
        for slot in trial.lost:
            unit = service_unit(JOB, slot)
            state = self.ssh(trial.victim, f"systemctl is-active {unit}").strip()
            regs = {n for n, sid in self.probe.instances(JOB, passing=False)
                    if sid == instance_id(JOB, slot)}
            passing = {n for n, sid in self.probe.instances(JOB, passing=True)
                       if sid == instance_id(JOB, slot)}
            if state == "active" or trial.victim in regs:
                found.append(f"{JOB}-{slot}: unit {state or '?'}, registered on "
                             f"{','.join(sorted(regs))}, passing on "
                             f"{','.join(sorted(passing))}")
        return "; ".join(found)

    def remove_orphans(self, trial: FailoverTrial) -> None:
        """Keep trials independent: stop the old units and drop their registrations."""
        for slot in trial.lost:
            sid = instance_id(JOB, slot)
            self.ssh(trial.victim, f"systemctl stop {service_unit(JOB, slot)}; "
                     f"python3 -c \"import urllib.request as u; u.urlopen(u.Request("
                     f"'{self.addr}/v1/agent/service/deregister/{sid}', method='PUT'))\"")

    def ssh(self, node: str, command: str) -> str:
        address = next(n.address for n in self.lab.nodes if n.name == node)
        proc = subprocess.run(["ssh", "-i", str(self.lab.ssh_key), "-o", "BatchMode=yes",
                               "-o", "StrictHostKeyChecking=no", "-o",
                               "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                               f"root@{address}", command],
                              capture_output=True, text=True, timeout=30)
        return proc.stdout

    # leader failover ---------------------------------------------------------------------
    def leader_trials(self) -> list[FailoverTrial]:
        """Leader sessions bound to two nodes that run instances, so the kill also loses
        instances and the new leader has work to do."""
        self.settle()
        self.stop_schedulers()
        bound = sorted({node for node, _ in self.probe.records(JOB).values()})[:2]
        for i, node in enumerate(bound, 1):
            self.start_scheduler(f"lsched-{i}", node)
        trials = self.leader_results
        for _ in range(self.args.trials):
            if not self.settle():
                break
            sid, leader_node = None, None
            if wait_for("a leader bound to a lab node", lambda: self.probe.leader()[1]
                        in bound, 60) is not None:
                sid, leader_node = self.probe.leader()
            if leader_node not in bound:
                log(f"leader session is on {leader_node!r}, not on {bound}; skipping")
                break
            _, lost = self.pick_victim(0, among=[leader_node])
            trial = FailoverTrial(leader_node, lost)
            trials.append(trial)
            self.kill_and_observe(trial, leader_sid=sid)
            self.recover(trial)
        return trials


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    return True


def _wait_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


# ----- report -------------------------------------------------------------------------------
RUN_MARKS = [("planned", "-> every slot has a record (pending)"),
             ("registered", "-> every instance registered in Consul"),
             ("passing", "-> every instance passing (target < 5 s)"),
             ("dns", "-> records running, DNS SRV lists every node")]
PHASES = [("detection", "kill -> serfHealth critical"),
          ("planning", "detection -> lost slots re-planned (pending)"),
          ("playbook", "planned -> registered on the new node"),
          ("health", "registered -> passing"),
          ("dns", "passing -> DNS SRV lists all, not the dead"),
          ("total", "detection -> all lost passing (target <= 3 s)"),
          ("total_dns", "detection -> DNS correct"),
          ("kill_to_passing", "kill -> all lost passing")]


def report(args, run: dict[str, list[float]], nodes: list[FailoverTrial],
           leaders: list[FailoverTrial], load_before: str) -> None:
    print(f"\nWalle failover benchmark: lab {args.lab}, {args.nodes} nodes, service count "
          f"{args.count}, check interval {args.check_interval}, lock delay "
          f"{args.lock_delay:g}s, poll {POLL * 1000:.0f} ms")
    print(f"load average (1/5/15 min): before {load_before}, after {_load()}; "
          f"{os.cpu_count()} CPUs")
    print_table("walle run of a 3-instance service, from submit (seconds)",
                [(what, run.get(k, []), "") for k, what in RUN_MARKS])
    done = [t.phases() for t in nodes]
    complete = sum(t.complete for t in nodes)
    print_table(f"node failover, {complete}/{len(nodes)} trials complete (seconds)",
                [(f"{k}: {what}", [p[k] for p in done if k in p], "") for k, what in PHASES])
    for t in nodes:
        print(f"  trial {t.victim} lost {t.lost}: orphan after reboot: {t.orphan or 'none'}")
    ldone = [t for t in leaders if t.detected is not None and t.new_leader is not None]
    since_detect = [t.new_leader - t.detected for t in ldone]
    acted = [min(t.planned.values()) - t.detected for t in ldone if t.planned]
    print_table(f"leader failover, {len(ldone)}/{len(leaders)} trials complete (seconds)", [
        ("kill -> serfHealth critical", [t.detected - t.kill for t in ldone], ""),
        ("kill -> new leader (lock key changes)", [t.new_leader - t.kill for t in ldone], ""),
        ("detection -> new leader", since_detect,
         f"target lock delay + 2 = {args.lock_delay + 2:g}"),
        ("detection -> new leader acts (slot re-planned)", acted,
         f"target {args.lock_delay + 2:g}"),
        ("detection -> all lost instances passing", [max(t.passing.values()) - t.detected
                                                     for t in ldone if t.complete and t.lost],
         ""),
        ("kill -> new leader acts", [min(t.planned.values()) - t.kill for t in ldone
                                     if t.planned], ""),
    ])
    for t in leaders:
        print(f"  trial {t.victim} lost {t.lost}: orphan after reboot: {t.orphan or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--count", type=int, help="instances of the killed service "
                        "(default: nodes - 1, one spare node for distinct_hosts)")
    parser.add_argument("--lab", default="bench")
    parser.add_argument("--lock-delay", type=float, default=5.0)
    parser.add_argument("--check-interval", default="2s",
                        help="health check interval (examples/web.yml: 2s; stand-in min 1s)")
    parser.add_argument("--trial-timeout", type=float, default=90.0)
    parser.add_argument("--skip", action="append", default=[],
                        choices=["run", "node", "leader"], help="skip a part (repeatable)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    parser.add_argument("--logs", default="/tmp/walle-bench-failover",
                        help="where the lab's scheduler/Consul logs are copied at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the lab needs nspawn, mounts and a bridge")
    if not 1 <= args.trials <= 20 or not 2 <= args.nodes <= 9:
        parser.error("--trials 1..20, --nodes 2..9")
    args.count = args.count or args.nodes - 1
    if not 1 <= args.count < args.nodes:
        parser.error("--count must be 1..nodes-1: distinct_hosts needs a spare node")
    load_before = _load()
    bench = Bench(args)
    run: dict[str, list[float]] = {}
    try:
        bench.setup()
        bench.start_scheduler("scheduler-1", None)
        bench.start_scheduler("scheduler-2", None)
        if "run" not in args.skip:
            run = bench.run_trials()
        submit(bench.store, service_spec(JOB, args.count, args.check_interval))
        if "node" not in args.skip:
            bench.node_trials()
        if "leader" not in args.skip:
            bench.leader_trials()
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    finally:
        report(args, run, bench.node_results, bench.leader_results, load_before)
        bench.save_logs(Path(args.logs))
        if args.keep:
            log(f"lab {args.lab} kept: {bench.lab.dir}; remove with walle lab down "
                f"--lab {args.lab}")
        else:
            bench.lab.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
