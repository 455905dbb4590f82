"""Chaos run of the whole system in the lab: random faults while invariants are checked.

    sudo .venv/bin/python bench/chaos.py [--minutes 10] [--seed 1] [--nodes 4] [--keep]

Builds its own lab (`chaos`; 4 nodes, the Consul stand-in, Serf, site.yml, two schedulers),
submits a service (`chaos-web`, count 2), a cron job (`chaos-tick`, every minute) and, during
the run, a new batch job every other submission interval and a `walle scale` of the service in
between (both through the CLI, `walle run` / `walle scale`). For --minutes it injects one fault
at a time, in seeded random order (each round is a shuffle of the kinds, so a short run still
sees every kind):

  node-kill        SIGKILL a node's nspawn + init (power loss); boot it again after --node-down s
  leader-kill      SIGKILL the leading scheduler (and its playbook children); restart it
  schedulers-kill  SIGKILL every scheduler; restart them
  standin-kill     SIGKILL the Consul stand-in; restart it on the same data dir
  partition        detach a node's veth from the lab bridge for --partition s; attach it again
  agent-restart    systemctl restart the node's Consul agent (Serf in the lab)

An observer thread samples every --observe s, from the nodes themselves (systemctl over nsenter,
which also sees a partitioned node) and from Consul (slot records, checks), and flags:
  duplicate        one slot's unit active on two nodes, unless the slot's record names both (a
                   graceful move) or the extra copy is on a node cut off by a fault (or back for
                   less than --reap-grace s): such "fenced" overlaps are reported with durations
                   (a partitioned node stops its own copies: walle-fence; its copies count as
                   fenced only for --fence-bound s after the cut, never after the heal)
  two-serving      one Walle instance passing its checks (its node's serfHealth too) on two
                   nodes at once
After every fault is undone, the cluster must converge within --bound s (every slot running on
exactly its record's node, services passing, every node's serfHealth passing): `no-convergence`
otherwise. At the end: every acknowledged `walle run`/`walle scale` is in the job keys
(`lost-submission` otherwise), and every batch slot completed exactly once (`batch-not-once`):
its run was committed once (the "committed" line walle-batch-commit prints in the node's
journal once Consul saved walle/done/<job>/<slot>), it ran to its end (the marker line the job
prints) and its record says stopped. A run that ended but was not committed (its node died
in the milliseconds between the job's exit and Consul's answer) is retried: the report counts
those re-runs apart, they are not completions. Exit status 1 on any violation.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.adapters.runner import REPO_ROOT, ansible_env
from walle.cli.demo import provision, start_schedulers
from walle.jobspec import parse_spec
from walle.lab import faults
from walle.lab.nodes import Lab, LabError
from walle.naming import (
    instance_id,
    parse_alloc_key,
    parse_instance_id,
    parse_unit,
    service_unit,
    unit_stem,
)
from walle.service.presence import DEFAULT_FENCE_AFTER

KINDS = ("node-kill", "leader-kill", "schedulers-kill", "standin-kill", "partition",
         "agent-restart")
SERVICE, CRON, BATCH_PREFIX = "chaos-web", "chaos-tick", "chaos-b"
SERVICE_PORT = 8090
BATCH_MARKER = "chaos-batch-done"
COMMIT_MARKER = "walle-batch-commit: committed "  # roles/node/files/walle-batch-commit
RUNNING_STATES = ("active", "activating", "deactivating", "reloading")
BOOTED = ("running", "degraded")  # systemctl is-system-running of a node done booting
CLI_TIMEOUT = 40.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----- the workload -------------------------------------------------------------------------
def service_doc(count: int) -> dict:
    """A small HTTP service; its static port makes it at most one per node."""
    return {
        "name": SERVICE, "kind": "service", "count": count, "strategy": "spread",
        "resources": {"cpu": "0.05-0.2", "memory": "16M-64M"},
        "runtime": {"command": "/usr/bin/python3",
                    "args": ["-m", "http.server", str(SERVICE_PORT)], "working_dir": "/tmp"},
        "health": {"type": "http", "path": "/", "port": SERVICE_PORT, "interval": "1s",
                   "timeout": "1s"},
        "stop": {"timeout": "5s"},
        "service": {"port": SERVICE_PORT},
        "update": {"max_parallel": 1, "health_timeout": "30s"},
    }


def cron_doc() -> dict:
    return {
        "name": CRON, "kind": "cron", "count": 1, "schedule": "*-*-* *:*:00",
        "resources": {"cpu": 0.05, "memory": "16M"},
        "runtime": {"command": "/bin/sh", "args": ["-c", "echo chaos-tick"]},
        "restart": "no", "retries": 1,
    }


def batch_doc(name: str, count: int, seconds: int) -> dict:
    """Works `seconds`, then prints the marker the exactly-once check counts in the journal."""
    return {
        "name": name, "kind": "batch", "count": count, "retries": 3,
        "resources": {"cpu": 0.05, "memory": "16M"},
        "runtime": {"command": "/bin/sh",
                    "args": ["-c", f"sleep {seconds}; echo {BATCH_MARKER}"]},
    }


# ----- what the cluster looks like at one instant ----------------------------------------------
@dataclass
class Record:
    node: str
    state: str
    previous: str | None


@dataclass
class Sample:
    at: float
    up: set[str]  # nodes done booting (systemd running or degraded)
    running: dict[tuple[str, int], set[str]]  # (job, slot) -> nodes where its unit is active
    consul_ok: bool = False
    records: dict[tuple[str, int], Record] = field(default_factory=dict)
    passing: dict[str, set[str]] = field(default_factory=dict)  # service ID -> passing nodes
    serf: dict[str, str] = field(default_factory=dict)  # node -> serfHealth status
    leader: str | None = None  # the session holding walle/leader


def parse_units(listing: str, cron_jobs: set[str]) -> set[tuple[str, int]]:
    """`systemctl list-units --plain --no-legend` lines -> (job, slot) of running instances.
    A cron slot runs while its timer is active (it fires on that node)."""
    out = set()
    for line in listing.splitlines():
        parts = line.split()
        parsed = parse_unit(parts[0]) if len(parts) >= 3 else None
        if parsed is None or parts[2] not in RUNNING_STATES:
            continue
        if parts[0].endswith(".service") or parsed[0] in cron_jobs:  # a cron slot's timer
            out.add(parsed)
    return out


def parse_checks(checks: list[dict]) -> tuple[dict[str, set[str]], dict[str, str]]:
    """/v1/health/state/any -> (Walle instance ID -> nodes where every check passes, the
    node's serfHealth included, as Consul's `?passing` filter and DNS judge it; serfHealth).
    Node-level services registered on every node (walle-exporter, node-exporter) are not
    instances of a slot and are left out."""
    status: dict[tuple[str, str], list[str]] = defaultdict(list)
    serf = {}
    for c in checks:
        if c.get("CheckID") == "serfHealth":
            serf[c["Node"]] = c["Status"]
        elif c.get("ServiceID"):
            status[(c["ServiceID"], c["Node"])].append(c["Status"])
    passing: dict[str, set[str]] = defaultdict(set)
    for (sid, node), states in status.items():
        if parse_instance_id(sid) is None or serf.get(node) != "passing":
            continue  # not a slot's instance, or its node is failed: out of DNS
        if all(s == "passing" for s in states):
            passing[sid].add(node)
    return dict(passing), serf


def parse_records(entries: list[dict]) -> dict[tuple[str, int], Record]:
    out = {}
    for entry in entries or []:
        slot = parse_alloc_key(entry["Key"])
        if slot is None:
            continue
        with contextlib.suppress(ValueError, TypeError):
            body = json.loads(base64.b64decode(entry.get("Value") or b"e30="))
            prev = body.get("previous") or {}
            out[slot] = Record(body.get("node"), body.get("state"), prev.get("node"))
    return out


# ----- faults and violations ------------------------------------------------------------------
@dataclass
class Fault:
    kind: str
    target: str
    start: float
    healed: float | None = None  # when the fault was undone (node back, link up, restarted)
    converged: float | None = None  # seconds from `healed` to convergence
    failover: float | None = None  # node faults: injection -> service whole again elsewhere

    @property
    def label(self) -> str:
        return f"{self.kind} {self.target}".strip()


@dataclass
class Violation:
    kind: str
    at: float
    detail: str


@dataclass
class Overlap:
    job: str
    slot: int
    start: float
    end: float | None = None
    nodes: set[str] = field(default_factory=set)
    kind: str = "fenced"  # sanctioned (graceful move) | fenced (cut-off node) | duplicate


class Observer(threading.Thread):
    """Samples the cluster every `interval` s and checks the instant invariants."""

    def __init__(self, chaos: Chaos, interval: float):
        super().__init__(name="observer", daemon=True)
        self.chaos, self.interval = chaos, interval
        self.stop = threading.Event()
        self.latest: Sample | None = None
        self.samples = 0
        self.open: dict[tuple[str, int], Overlap] = {}
        self.overlaps: list[Overlap] = []
        self._serving_flagged: set[str] = set()
        self._last_records: dict[tuple[str, int], Record] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                sample = self.sample()
                self.check(sample)
                self.latest, self.samples = sample, self.samples + 1
            except Exception as err:  # noqa: BLE001 - the observer must outlive any one sample
                log(f"observer: sample failed: {err!r}")
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        now = time.monotonic()
        for overlap in self.open.values():
            overlap.end = now
            self.overlaps.append(overlap)
        self.open.clear()

    def sample(self) -> Sample:
        lab, cron = self.chaos.lab, {CRON}
        up, running = set(), defaultdict(set)
        for node in [n.name for n in lab.nodes]:
            with contextlib.suppress(LabError, subprocess.TimeoutExpired):
                proc = faults.node_exec(lab, node, [
                    "sh", "-c", 'systemctl is-system-running; systemctl list-units --all '
                    '--plain --no-legend "$@"', "list", "walle-*.service", "walle-*.timer"],
                    timeout=10)
                state, _, units = proc.stdout.partition("\n")
                if state.strip() in BOOTED:  # a node still booting may yet start units
                    up.add(node)
                for slot in parse_units(units, cron):
                    running[slot].add(node)
        sample = Sample(time.monotonic(), up, dict(running))
        try:
            sample.records = parse_records(self.chaos.get("/v1/kv/walle/allocs/",
                                                          recurse="true"))
            sample.passing, sample.serf = parse_checks(self.chaos.get("/v1/health/state/any"))
            lock = self.chaos.get("/v1/kv/walle/leader")
            sample.leader = lock[0].get("Session") if lock else None
            sample.consul_ok = True
            self._last_records = sample.records
        except (requests.RequestException, ValueError):
            sample.records = self._last_records  # the stand-in is down: judge on the last view
        return sample

    def check(self, s: Sample) -> None:
        for sid, nodes in s.passing.items():
            if len(nodes) > 1 and sid not in self._serving_flagged:
                self._serving_flagged.add(sid)
                self.chaos.violate("two-serving", f"{sid} passes its checks on "
                                   f"{', '.join(sorted(nodes))} at once")
            elif len(nodes) <= 1:
                self._serving_flagged.discard(sid)
        for slot, nodes in s.running.items():
            if len(nodes) > 1:
                self._overlap(s, slot, nodes)
        for slot in [k for k in self.open if len(s.running.get(k, ())) <= 1]:
            overlap = self.open.pop(slot)
            overlap.end = s.at
            self.overlaps.append(overlap)

    def _overlap(self, s: Sample, slot: tuple[str, int], nodes: set[str]) -> None:
        overlap = self.open.get(slot)
        if overlap is None:
            overlap = self.open[slot] = Overlap(*slot, start=s.at, kind="sanctioned")
        overlap.nodes |= nodes
        record = s.records.get(slot)
        if record and record.previous and nodes <= {record.node, record.previous}:
            kind = "sanctioned"
        elif record and all(self.chaos.fenced(n, s.at) for n in nodes - {record.node}):
            kind = "fenced"
        else:
            kind = "duplicate"
        rank = {"sanctioned": 0, "fenced": 1, "duplicate": 2}
        if rank[kind] > rank[overlap.kind]:
            overlap.kind = kind
            if kind == "duplicate":
                where = f"record on {record.node} ({record.state})" if record else "no record"
                self.chaos.violate("duplicate", f"{slot[0]}-{slot[1]} active on "
                                   f"{', '.join(sorted(nodes))}; {where}; cut off: "
                                   f"{self.chaos.cut_summary(s.at)}")


# ----- the run -------------------------------------------------------------------------------
class Chaos:
    def __init__(self, args):
        self.args = args
        self.scheduler_args = ([] if args.max_inflight_batches is None
                               else ["--max-inflight-batches", str(args.max_inflight_batches)])
        self.rng = random.Random(args.seed)
        self.lab = Lab(args.lab, progress=log)
        self.http = requests.Session()
        self.faults: list[Fault] = []
        self.violations: list[Violation] = []
        self.lock = threading.Lock()
        self.cut: dict[str, float | None] = {}  # node -> None while cut off, else healed-at
        self.partitioned_at: dict[str, float] = {}  # node -> start of its current partition
        self.acks: list[tuple[str, str, int | str]] = []  # (job, "run"|"scale", version/count)
        self.attempts: list[tuple[str, str, int | str, bool]] = []
        self.service_count = args.count
        self.batch_jobs: dict[str, int] = {}  # acknowledged batch job -> count
        self.stale_sessions: set[str] = set()  # leader sessions of killed schedulers
        self.versions: dict[str, str] = {}  # acknowledged batch job -> spec digest
        self.spec_dir = Path(tempfile.mkdtemp(prefix="walle-chaos-"))
        self.t0 = time.monotonic()

    # --- plumbing ---
    def get(self, path: str, **params):
        answer = self.http.get(self.addr + path, params=params, timeout=3)
        if answer.status_code == 404:
            return []
        answer.raise_for_status()
        return answer.json()

    def violate(self, kind: str, detail: str) -> None:
        with self.lock:
            self.violations.append(Violation(kind, time.monotonic() - self.t0, detail))
        log(f"VIOLATION {kind}: {detail}")

    def fenced(self, node: str, now: float) -> bool:
        """A node cut off by a fault now, or back for less than --reap-grace seconds. A
        partitioned node fences itself (walle-fence): its copies count as fenced only for
        --fence-bound s after the cut, and not at all once it is healed."""
        with self.lock:
            if node not in self.cut:
                return False
            healed, cut_at = self.cut[node], self.partitioned_at.get(node)
        if cut_at is not None:
            return healed is None and now - cut_at < self.args.fence_bound
        return healed is None or now - healed < self.args.reap_grace

    def cut_summary(self, now: float) -> str:
        with self.lock:
            items = dict(self.cut)
        return ", ".join(f"{n} ({'now' if h is None else f'back {now - h:.0f}s'})"
                         for n, h in sorted(items.items())) or "none"

    def walle(self, *argv: str) -> bool:
        """One CLI call against the lab; True when it acknowledged (exit 0)."""
        cmd = [str(Path(sys.executable).parent / "walle"), *argv, "--consul-addr", self.addr]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                                  check=False)
        except subprocess.TimeoutExpired:
            log(f"walle {' '.join(argv)}: no answer within {CLI_TIMEOUT:.0f}s")
            return False
        if proc.returncode != 0:
            log(f"walle {' '.join(argv)}: rc {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-200:]}")
        return proc.returncode == 0

    def write_spec(self, doc: dict) -> Path:
        path = self.spec_dir / f"{doc['name']}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    # --- setup ---
    def setup(self) -> None:
        t = time.monotonic()
        self.lab.up(self.args.nodes)
        self.addr = self.lab.start_consul()
        if not self.args.no_provision:
            log("provisioning with site.yml ...")
            if provision(self.lab) != 0:
                raise SystemExit("site.yml failed")
        start_schedulers(self.lab, self.addr, extra=self.scheduler_args)
        self.store = StateStore(ConsulApi(ConsulConfig.from_env(addr=self.addr)))
        self.observer = Observer(self, self.args.observe)
        self.observer.start()
        for doc in (service_doc(self.args.count), cron_doc()):
            if not self.walle("run", str(self.write_spec(doc))):
                raise SystemExit(f"could not submit {doc['name']}")
        ok, why = self.wait_converged(self.args.bound * 2)
        if not ok:
            raise SystemExit(f"the workload did not converge before the first fault: {why}")
        log(f"lab ready and converged in {time.monotonic() - t:.1f}s")

    # --- convergence ---
    def convergence_gaps(self, s: Sample | None) -> list[str]:
        """What keeps the cluster from its desired state (empty: converged)."""
        if s is None:
            return ["no sample yet"]
        if not s.consul_ok:
            return ["Consul does not answer"]
        gaps = []
        nodes = {n.name for n in self.lab.nodes}
        if s.up != nodes:
            gaps.append(f"nodes not up: {sorted(nodes - s.up)}")
        if s.leader is None or s.leader in self.stale_sessions:
            gaps.append("no live scheduler holds walle/leader")
        bad_serf = sorted(n for n in nodes if s.serf.get(n) != "passing")
        if bad_serf:
            gaps.append(f"serfHealth not passing: {bad_serf}")
        with self.lock:
            batch = dict(self.batch_jobs)
        want = {SERVICE: self.service_count, CRON: 1}
        for job, count in want.items():
            slots = {k: r for k, r in s.records.items() if k[0] == job}
            if sorted(k[1] for k in slots) != list(range(count)):
                gaps.append(f"{job}: records for slots {sorted(k[1] for k in slots)}, "
                            f"want 0..{count - 1}")
            for (j, slot), r in sorted(slots.items()):
                where = s.running.get((j, slot), set())
                if r.state != "running" or r.previous:
                    gaps.append(f"{j}-{slot}: {r.state}" + (f", previous on {r.previous}"
                                                            if r.previous else ""))
                elif where != {r.node}:
                    gaps.append(f"{j}-{slot}: record on {r.node}, active on {sorted(where)}")
                elif job == SERVICE and s.passing.get(instance_id(j, slot)) != {r.node}:
                    passing = sorted(s.passing.get(instance_id(j, slot), ()))
                    gaps.append(f"{j}-{slot}: passing on {passing}, record on {r.node}")
        for (job, slot), where in s.running.items():
            if job in batch and len(where) > 1:
                gaps.append(f"{job}-{slot}: active on {sorted(where)}")
            if job not in batch and job not in want:
                gaps.append(f"{job}-{slot}: unknown instance active on {sorted(where)}")
        return gaps

    def wait_converged(self, bound: float) -> tuple[bool, list[str]]:
        deadline = time.monotonic() + bound
        seen = self.observer.samples
        gaps = ["no sample yet"]
        while time.monotonic() < deadline:
            if self.observer.samples != seen:  # judge fresh samples only
                seen = self.observer.samples
                previous, gaps = gaps, self.convergence_gaps(self.observer.latest)
                if not gaps:
                    return True, []
                if gaps != previous:  # what the cluster is waiting for, as it changes
                    log(f"  waiting: {'; '.join(gaps[:4])}")
            time.sleep(0.2)
        return False, gaps

    def service_whole_without(self, victim: str) -> bool:
        """Every service slot running and passing on a node other than `victim`."""
        s = self.observer.latest
        if s is None or not s.consul_ok:
            return False
        for slot in range(self.service_count):
            r = s.records.get((SERVICE, slot))
            if r is None or r.node == victim:
                return False
            if s.passing.get(instance_id(SERVICE, slot)) != {r.node}:
                return False
        return True

    # --- faults ---
    def run(self) -> None:
        self.t0 = time.monotonic()  # the report's t= are seconds into the fault phase
        end = self.t0 + self.args.minutes * 60
        submitter = threading.Thread(target=self.submit_loop, args=(end,), daemon=True)
        submitter.start()
        order: list[str] = []
        # --every-kind: a loaded machine converges slowly and fits fewer faults in the time;
        # finish the first round (every kind once) anyway, up to --max-minutes
        hard_end = self.t0 + max(self.args.minutes, self.args.max_minutes) * 60
        while time.monotonic() < end or (
                self.args.every_kind and time.monotonic() < hard_end
                and not set(self.args.kinds) <= {f.kind for f in self.faults}):
            if not order:
                order = self.rng.sample(self.args.kinds, len(self.args.kinds))
            fault = self.inject(order.pop())
            self.faults.append(fault)
            ok, gaps = self.wait_converged(self.args.bound)
            if ok:
                fault.converged = time.monotonic() - fault.healed
                log(f"converged {fault.converged:.1f}s after {fault.label} was undone")
            else:
                self.violate("no-convergence", f"{fault.label}: not within "
                             f"{self.args.bound:.0f}s of the undo: {'; '.join(gaps[:6])}")
            time.sleep(self.rng.uniform(2, 5))
        submitter.join(timeout=CLI_TIMEOUT * 2)

    def inject(self, kind: str) -> Fault:
        nodes = [n.name for n in self.lab.nodes]
        victim = self.rng.choice(nodes)
        fault = Fault(kind, victim if kind in ("node-kill", "partition", "agent-restart")
                      else "", time.monotonic())
        s = self.observer.latest
        lost = bool(s) and any(job == SERVICE and victim in nodes
                               for (job, _), nodes in s.running.items())
        log(f"fault: {fault.label}" + (" (runs service instances)" if lost and fault.target
                                        else ""))
        if kind == "node-kill":
            self.cut_off(victim)
            self.lab.kill_node(victim)
            self.hold(fault, self.rng.uniform(*self.args.node_down), lost)
            self.lab.restart_node(victim)
            self.ensure_member(victim)
            self.back(victim)
        elif kind == "partition":
            self.cut_off(victim)
            with self.lock:
                self.partitioned_at[victim] = time.monotonic()
            faults.partition(self.lab, victim)
            try:
                self.hold(fault, self.rng.uniform(*self.args.partition), lost)
            finally:
                faults.heal(self.lab, victim)
            self.back(victim)
        elif kind == "leader-kill":
            key = self.wait_leader_key()
            fault.target = key or "(no leader)"
            if key:
                faults.kill_daemon(self.lab, key)
            time.sleep(self.rng.uniform(2, 5))
            start_schedulers(self.lab, self.addr, extra=self.scheduler_args)
        elif kind == "schedulers-kill":
            self.note_stale_leader()
            for key in self.scheduler_keys():
                faults.kill_daemon(self.lab, key)
            time.sleep(self.rng.uniform(2, 8))
            start_schedulers(self.lab, self.addr, extra=self.scheduler_args)
        elif kind == "standin-kill":
            faults.kill_daemon(self.lab, "consul-standin")
            time.sleep(self.rng.uniform(1, 4))
            faults.restart_standin(self.lab)
        elif kind == "agent-restart":
            faults.restart_node_agent(self.lab, victim)
        fault.healed = time.monotonic()
        return fault

    def hold(self, fault: Fault, seconds: float, lost: bool) -> None:
        """Keep a node fault for `seconds`, timing the service's failover meanwhile when the
        node ran service instances (`lost`)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if lost and fault.failover is None and self.service_whole_without(fault.target):
                fault.failover = time.monotonic() - fault.start
            time.sleep(0.25)

    def cut_off(self, node: str) -> None:
        with self.lock:
            self.cut[node] = None
            self.partitioned_at.pop(node, None)

    def back(self, node: str) -> None:
        with self.lock:
            self.cut[node] = time.monotonic()

    def ensure_member(self, node: str) -> None:
        """A rebooted node's Serf starts on boot and rejoins; re-run site.yml for it if not."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s = self.observer.latest
            if s and s.serf.get(node) == "passing" and s.at > deadline - 30:
                return
            time.sleep(0.5)
        log(f"{node}: Serf did not rejoin within 30s; re-running site.yml --limit {node}")
        subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                        str(self.lab.inventory_path), "--limit", node,
                        str(REPO_ROOT / "site.yml")], cwd=REPO_ROOT, capture_output=True,
                       timeout=600, check=False,
                       env={**os.environ, **ansible_env(), "WALLE_LAB": self.lab.name})

    def scheduler_keys(self) -> list[str]:
        return sorted(k for k in self.lab.state.processes if k.startswith("scheduler-"))

    def leader(self) -> tuple[str | None, str | None]:
        """(session, lab process key) of the scheduler holding walle/leader."""
        with contextlib.suppress(requests.RequestException, ValueError, IndexError, KeyError):
            entry = self.get("/v1/kv/walle/leader")[0]
            if entry.get("Session"):
                name = base64.b64decode(entry["Value"] or b"").decode()
                return entry["Session"], next((k for k in self.scheduler_keys()
                                               if name == f"{self.lab.name}-{k}"), None)
        return None, None

    def note_stale_leader(self) -> None:
        """A killed leader's session holds the key until its TTL runs out; the same process
        key then names a new, non-leading incarnation, which leader-kill must not take for it."""
        sid, _ = self.leader()
        if sid:
            self.stale_sessions.add(sid)

    def wait_leader_key(self, timeout: float = 60.0) -> str | None:
        """The process key of a live leader (not a session left by a killed one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sid, key = self.leader()
            if sid and key and sid not in self.stale_sessions:
                self.stale_sessions.add(sid)
                return key
            time.sleep(0.5)
        return None

    # --- submissions ---
    def submit_loop(self, end: float) -> None:
        n = 0
        while time.monotonic() < end - self.args.submit_every:
            time.sleep(self.args.submit_every)
            n += 1
            if n % 2:
                name = f"{BATCH_PREFIX}{n // 2}"
                doc = batch_doc(name, 2, self.rng.randint(3, 10))
                ok = self.walle("run", str(self.write_spec(doc)))
                self.versions[name] = parse_spec(doc, source=name).digest()
                with self.lock:
                    self.attempts.append((name, "run", 2, ok))
                    if ok:
                        self.acks.append((name, "run", 2))
                        self.batch_jobs[name] = 2
            else:
                count = 3 if self.service_count == 2 else 2
                ok = self.walle("scale", SERVICE, str(count))
                with self.lock:
                    self.attempts.append((SERVICE, "scale", count, ok))
                    if ok:
                        self.acks.append((SERVICE, "scale", count))
                        self.service_count = count
                if not ok:
                    self.reread_service_count()
            log(f"submission {n}: {self.attempts[-1]}")

    def reread_service_count(self) -> None:
        """An unacknowledged scale may still have been written: the job key is the truth."""
        for _ in range(20):
            with contextlib.suppress(Exception):
                stored = self.store.job(SERVICE)
                if stored is not None:
                    with self.lock:
                        self.service_count = int(stored.spec["count"])
                    return
            time.sleep(3)

    # --- final checks ---
    def finish(self) -> dict:
        healed = faults.heal_all(self.lab)
        if healed:
            log(f"healed left-over partitions: {healed}")
        start_schedulers(self.lab, self.addr, extra=self.scheduler_args)
        faults.restart_standin(self.lab)
        ok, gaps = self.wait_converged(self.args.bound * 2)
        if not ok:
            self.violate("no-convergence", f"at the end: {'; '.join(gaps[:6])}")
        self.check_submissions()
        return self.check_batches()

    def check_submissions(self) -> None:
        with self.lock:
            acks, attempts = list(self.acks), list(self.attempts)
        for name, what, value in acks:
            stored = self.store.job(name)
            if stored is None:
                self.violate("lost-submission", f"acknowledged {what} of {name} ({value}): "
                             "no job key")
                continue
            if what == "scale" and (name, what, value) == [a for a in acks if a[0] == name][-1]:
                # an unacknowledged scale after the last acknowledged one may have been written
                last = max(i for i, a in enumerate(attempts) if a[:3] == (name, what, value)
                           and a[3])
                allowed = {value, *(a[2] for a in attempts[last + 1:] if a[0] == name)}
                if int(stored.spec["count"]) not in allowed:
                    self.violate("lost-submission", f"{name}: count {stored.spec['count']} in "
                                 f"the job key, last acknowledged {value}")
            elif what == "run" and stored.version != self.versions.get(name):
                self.violate("lost-submission", f"{name}: version {stored.version} in the job "
                             f"key, acknowledged {self.versions.get(name)}")

    def check_batches(self) -> dict:
        """Wait for every acknowledged batch slot to end, then count its completions."""
        with self.lock:
            jobs = dict(self.batch_jobs)
        deadline = time.monotonic() + self.args.bound * 2
        while time.monotonic() < deadline:
            s = self.observer.latest
            states = {k: r.state for k, r in (s.records if s else {}).items() if k[0] in jobs}
            if len(states) == sum(jobs.values()) and all(
                    v in ("stopped", "failed") for v in states.values()):
                break
            time.sleep(1)
        runs, commits = self.journal_markers()
        records = self.observer.latest.records if self.observer.latest else {}
        summary = Counter()
        for job, count in sorted(jobs.items()):
            for slot in range(count):
                unit = service_unit(job, slot)
                marks, committed = runs.get(unit, []), commits.get(unit, [])
                r = records.get((job, slot))
                summary[f"committed {len(committed)}x"] += 1
                if len(marks) > len(committed):
                    summary["re-runs after an uncommitted finish"] += len(marks) - 1
                if len(committed) > 1 or not marks or r is None or r.state != "stopped":
                    self.violate("batch-not-once", f"{job}-{slot}: committed "
                                 f"{len(committed)} time(s) ({', '.join(committed) or 'never'}), "
                                 f"ran to its end {len(marks)} time(s) "
                                 f"({', '.join(marks) or 'never'}); record "
                                 f"{f'{r.state} on {r.node}' if r else 'missing'}")
        return dict(summary)

    def journal_markers(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """unit -> where and when it printed the batch marker (its work ran to its end), and
        unit -> where and when walle-batch-commit recorded the run in Consul (the commit: what
        'exactly once' counts), over every node's journal."""
        runs: dict[str, list[str]] = defaultdict(list)
        commits: dict[str, list[str]] = defaultdict(list)
        units = unit_stem(BATCH_PREFIX, 0).removesuffix("-0") + "*"  # every batch job's units
        for node in [n.name for n in self.lab.nodes]:
            with contextlib.suppress(LabError, subprocess.TimeoutExpired):
                proc = faults.node_exec(self.lab, node, [
                    "journalctl", "--no-pager", "-o", "json", "-u", units,
                    "--output-fields=MESSAGE,_SYSTEMD_UNIT,__REALTIME_TIMESTAMP"],
                    timeout=60)
                for line in proc.stdout.splitlines():
                    with contextlib.suppress(ValueError):
                        entry = json.loads(line)
                        message = entry.get("MESSAGE")
                        if not isinstance(message, str):
                            continue
                        at = time.strftime("%H:%M:%S", time.gmtime(
                            int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6))
                        if message == BATCH_MARKER:
                            runs[entry.get("_SYSTEMD_UNIT")].append(f"{node} {at}")
                        elif message.startswith(COMMIT_MARKER):
                            commits[entry.get("_SYSTEMD_UNIT")].append(f"{node} {at}")
        return runs, commits

    def stop(self) -> None:
        if hasattr(self, "observer"):
            self.observer.stop.set()
            self.observer.join(timeout=30)


# ----- report --------------------------------------------------------------------------------
def spread(values: list[float]) -> str:
    if not values:
        return f"{'-':>7}{'-':>7}"
    return f"{statistics.median(values):7.1f}{max(values):7.1f}"


def report(chaos: Chaos, batches: dict, load_before: str) -> None:
    a = chaos.args
    print(f"\nWalle chaos run: lab {a.lab}, {a.nodes} nodes, seed {a.seed}, {a.minutes:g} min, "
          f"convergence bound {a.bound:g}s, observer every {a.observe:g}s "
          f"({chaos.observer.samples if hasattr(chaos, 'observer') else 0} samples), "
          f"schedulers' options: {' '.join(chaos.scheduler_args) or 'their defaults'}")
    print(f"load average: before {load_before}, after "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs")
    print(f"\nfaults injected: {len(chaos.faults)}")
    print(f"  {'kind':<17}{'n':>3}{'conv. med':>10}{'max':>7}{'not conv.':>10}"
          f"{'failover med':>13}{'max':>7}")
    for kind in KINDS:
        fs = [f for f in chaos.faults if f.kind == kind]
        if not fs:
            continue
        conv = [f.converged for f in fs if f.converged is not None]
        fail = [f.failover for f in fs if f.failover is not None]
        print(f"  {kind:<17}{len(fs):>3}{spread(conv)[:7]:>10}{spread(conv)[7:]:>7}"
              f"{len(fs) - len(conv):>10}{spread(fail)[:7]:>13}{spread(fail)[7:]:>7}")
    overlaps = chaos.observer.overlaps if hasattr(chaos, "observer") else []
    print("\noverlaps (one slot active on two nodes), by kind: n, duration median / max (s)")
    for kind in ("sanctioned", "fenced", "duplicate"):
        ds = [o.end - o.start for o in overlaps if o.kind == kind]
        print(f"  {kind:<11}{len(ds):>3}{spread(ds)}")
    for o in overlaps:
        if o.kind != "sanctioned":
            print(f"    {o.kind} {o.job}-{o.slot} on {', '.join(sorted(o.nodes))}: "
                  f"{o.end - o.start:.1f}s from t={o.start - chaos.t0:.0f}s")
    acked = len(chaos.acks)
    print(f"\nsubmissions: {len(chaos.attempts)} attempted, {acked} acknowledged; "
          f"batch slots: {batches or 'none'}")
    print(f"\ninvariant violations: {len(chaos.violations)}")
    for v in chaos.violations:
        print(f"  t={v.at:6.0f}s {v.kind}: {v.detail}")


def seconds_range(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition("-")
    return float(lo), float(hi or lo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--count", type=int, default=2, help="service instances at the start")
    parser.add_argument("--lab", default="chaos")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated fault kinds (default: all)")
    parser.add_argument("--every-kind", action="store_true",
                        help="go on past --minutes until every kind was injected once")
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="with --every-kind: stop injecting after this long anyway")
    parser.add_argument("--bound", type=float, default=90.0,
                        help="seconds after a fault is undone within which the cluster must "
                             "converge")
    parser.add_argument("--node-down", type=seconds_range, default=(15.0, 40.0),
                        help="seconds a killed node stays down, LO-HI")
    parser.add_argument("--partition", type=seconds_range, default=(20.0, 60.0),
                        help="seconds a partition lasts, LO-HI")
    parser.add_argument("--reap-grace", type=float, default=30.0,
                        help="seconds a node back from a fault may still run stale copies")
    parser.add_argument("--fence-bound", type=float, default=DEFAULT_FENCE_AFTER + 6,
                        help="seconds a partitioned node may still run its copies (its "
                             "walle-fence time + 6; none after the heal)")
    parser.add_argument("--observe", type=float, default=1.5, help="observer period (s)")
    parser.add_argument("--submit-every", type=float, default=20.0)
    parser.add_argument("--max-inflight-batches", type=int, default=None,
                        help="the schedulers' --max-inflight-batches (default: theirs)")
    parser.add_argument("--no-provision", action="store_true",
                        help="reuse a lab kept with --keep (skip site.yml)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    parser.add_argument("--logs", default="/tmp/walle-chaos",
                        help="where the lab's scheduler/Consul logs are copied at the end")
    args = parser.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := set(args.kinds) - set(KINDS):
        parser.error(f"--kinds: unknown {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if os.geteuid() != 0:
        parser.error("run as root: the lab needs nspawn, mounts and a bridge")
    if args.nodes < 4:
        parser.error("--nodes: at least 4 (a killed or cut-off node must leave room)")
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    chaos = Chaos(args)
    batches: dict = {}
    try:
        chaos.setup()
        chaos.run()
        batches = chaos.finish()
    except KeyboardInterrupt:
        log("interrupted: reporting what was seen")
    finally:
        with contextlib.suppress(Exception):
            faults.heal_all(chaos.lab)
        chaos.stop()
        report(chaos, batches, load_before)
        save_logs(chaos.lab, Path(args.logs))
        if args.keep:
            log(f"lab {args.lab} kept; remove with walle lab down --lab {args.lab}")
        else:
            chaos.lab.down()
    return 1 if chaos.violations else 0


def save_logs(lab: Lab, dest: Path) -> None:
    if not lab.dir.exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for path in lab.dir.glob("*.log"):
        with contextlib.suppress(OSError):
            (dest / path.name).write_bytes(path.read_bytes())
    log(f"logs copied to {dest}")


if __name__ == "__main__":
    raise SystemExit(main())
