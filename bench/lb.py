"""Traffic through HAProxy while the pool changes under it (prints figures; not a test).

    sudo .venv/bin/python bench/lb.py [--trials 1] [--rate 20] [--json FILE] [--keep]

Builds its own lab of 4 nodes: node4 runs HAProxy (roles/lb, the `lb` group), node1-3 run a
service `front` whose spec asks for `service.lb: {port: 80}`. Each instance binds its own
dynamic port (`ports: [{label: http}]`, `${WALLE_PORT_HTTP}` in its arguments) and answers
with its instance name and the address:port it was reached on, so several share a node (no
distinct_hosts) and every probe is keyed by instance, not node. One client stream (--rate
requests/s, a new connection each, bounded in count and time) goes through HAProxy for the
whole run, and each phase's window of it is summed up: requests sent, failed, the longest gap
between two successful answers.
  steady      3 instances, a few seconds of traffic.
  kill        (each trial) hard kill of a node running an instance: time until HAProxy marks
              its server down; sessions HAProxy sent the dead server after that (must be 0);
              failed requests and longest gap after it was marked down; the scheduler moves
              the lost instance to a live node (maybe next to another instance): time to its
              first answer at its new port; which instances answer afterwards (every live one
              at its current address:port, only those). The killed node then boots again.
  scale-up    3 -> 6: for each new instance, the time from its record running to its first
              answer through HAProxy; a failure here is a new backend taking traffic too soon.
  scale-down  6 -> 3: three instances leave the pool and drain (stop.drain) before SIGTERM;
              a failure here is a request cut by a stop.
  rolling-update  a new version of the 3 instances (one at a time), each leaving the pool
              and draining before it is stopped or replaced.
`--json FILE` writes every figure and check (tests/lab/test_lb_lab.py asserts on it). The lab
is removed at the end unless --keep. See bench/README.md for measured figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.adapters.runner import REPO_ROOT, ansible_env
from walle.cli.demo import start_schedulers, submit
from walle.jobspec import parse_spec
from walle.lab.nodes import Lab
from walle.lab.traffic import Stream, haproxy_servers, summary
from walle.naming import instance_id
from walle.service.cluster import load_snapshot

JOB, LB_NODE, LB_PORT, STATS_PORT = "front", "node4", 80, 8404
NODES = 4  # node1-3 the service's, node4 HAProxy's
# answers GET with "<instance> <address>:<port>" (the instance from WALLE_JOB and WALLE_SLOT,
# the port it binds from its first argument, ${WALLE_PORT_HTTP}); one line: job arguments hold
# no newline, and no '%' or '$' (systemd specifiers and variables)
ANSWER = "; ".join([
    "import http.server as h, os, sys",
    "P = int(sys.argv[1])",
    "N = os.environ['WALLE_JOB'] + '-' + os.environ['WALLE_SLOT'] + ' '",
    "B = lambda s: (N + s.connection.getsockname()[0] + ':' + str(P)).encode() + bytes([10])",
    "R = lambda s: (s.send_response(200), s.send_header('Content-Length', str(len(B(s)))), "
    "s.end_headers(), s.wfile.write(B(s)))",
    "H = type('H', (h.BaseHTTPRequestHandler,), {'do_GET': R, 'log_message': lambda s, *a: 0})",
    "h.ThreadingHTTPServer(('', P), H).serve_forever()",
])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def front_spec(count: int, version: int = 1):
    return parse_spec({
        "name": JOB, "kind": "service", "count": count, "strategy": "spread",
        "resources": {"cpu": "0.05-0.5", "memory": "32M-96M"},
        "runtime": {"command": "/usr/bin/python3", "args": ["-c", ANSWER, "${WALLE_PORT_HTTP}"],
                    "working_dir": "/tmp", "env": {"FRONT_VERSION": str(version)}},
        "ports": [{"label": "http"}],  # dynamic: instances share nodes, no distinct_hosts
        "constraints": [{"attribute": "name", "operator": "ne", "value": LB_NODE}],
        "health": {"type": "http", "path": "/", "port": "http", "interval": "1s",
                   "timeout": "1s"},
        "stop": {"timeout": "5s"},  # stop.drain: the default (5 s)
        "service": {"port": "http", "lb": {"port": LB_PORT}},
    }, source="bench/lb.py")


def wait_for(what: str, probe: Callable, timeout: float, every: float = 0.2):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError, KeyError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"bench/lb.py: {what}: not within {timeout:.0f}s (last error: {last!r})")


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.lab = Lab(args.lab, progress=log)
        self.result: dict = {"rate": args.rate, "phases": {}, "kills": []}

    def setup(self) -> None:
        t0 = time.monotonic()
        self.lab.up(NODES)
        addr = self.lab.start_consul()
        extra = self.lab.dir / "lb.yml"
        extra.write_text(yaml.safe_dump({"lb": {"hosts": {LB_NODE: None}}}))
        log(f"provisioning with site.yml (HAProxy on {LB_NODE}) ...")
        self.site_yml(extra)
        # the lb role is idempotent: a second run on the lb host changes nothing
        recap = re.search(rf"^{LB_NODE}\s+: ok=\d+\s+changed=(\d+)",
                          self.site_yml(extra, "--limit", LB_NODE), re.MULTILINE)
        self.result["lb_host_changed_on_second_run"] = int(recap[1]) if recap else None
        start_schedulers(self.lab, addr)
        self.api = ConsulApi(ConsulConfig.from_env(addr=addr))
        self.store = StateStore(self.api)
        self.address = {n.name: n.address for n in self.lab.nodes}
        self.stats = f"http://{self.address[LB_NODE]}:{STATS_PORT}/stats"
        self.result["setup_s"] = round(time.monotonic() - t0, 1)
        log(f"lab ready in {time.monotonic() - t0:.1f}s")

    def site_yml(self, extra: Path, *more: str) -> str:
        env = {**os.environ, **ansible_env(), "WALLE_LAB": self.lab.name}
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i",
             str(self.lab.inventory_path), "-i", str(extra), *more, str(REPO_ROOT / "site.yml")],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"site.yml failed:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
        return proc.stdout

    # probes: everything is keyed by instance ("front-2"), its place by "address:port" ------
    def placed(self) -> dict[str, tuple[str, str]]:
        """instance -> (node, "address:port") of the job's running instances."""
        records = load_snapshot(self.api, self.store).records.values()
        return {instance_id(JOB, r.alloc.slot): (
                    r.alloc.node,
                    f"{self.address[r.alloc.node]}:{dict(r.alloc.dynamic_ports)['http']}")
                for r in records if r.alloc.job == JOB and r.alloc.state == "running"}

    def running(self) -> dict[str, str]:
        """instance -> "address:port" of the job's running instances."""
        return {i: ep for i, (_, ep) in self.placed().items()}

    def running_count(self, count: int) -> Callable:
        return lambda: (lambda r: r if len(r) == count else None)(self.running())

    def servers_up(self) -> set[str]:
        """"address:port" of the backend's servers HAProxy has UP."""
        return {s.address for s in haproxy_servers(self.stats)
                if s.backend == f"walle-{JOB}" and s.status.startswith("UP")}

    def answered(self, instance: str, endpoint: str, since: float) -> bool:
        return any(r.answer == f"{instance} {endpoint}" for r in self.stream.snapshot(since))

    def record(self, name: str, since: float, until: float = float("inf"), **extra) -> dict:
        figures = summary(self.stream.snapshot(since, until))
        figures.update(extra)
        self.result["phases"][name] = figures
        log(f"{name}: sent {figures['sent']}, failed {figures['failed']}, longest gap "
            f"{figures['longest_gap_s']:.2f}s, answers {figures['answers']}"
            + "".join(f", {k} {v}" for k, v in extra.items()))
        return figures

    # the run ---------------------------------------------------------------------------
    def run(self) -> None:
        submit(self.store, front_spec(3))
        first = wait_for("3 instances running", self.running_count(3), 240, every=1)
        wait_for("HAProxy serving all 3", lambda: self.servers_up() >= set(first.values()), 60)
        self.stream = Stream(f"http://{self.address[LB_NODE]}:{LB_PORT}/", rate=self.args.rate,
                             max_requests=int(self.args.rate * self.args.max_seconds),
                             max_seconds=self.args.max_seconds).start()
        t0 = time.monotonic()
        time.sleep(4)
        self.record("steady", t0, running=_pairs(first))
        for trial in range(self.args.trials):
            self.kill(trial)
        self.scale_up(6)
        self.scale("scale-down", 3)
        self.rolling_update(3)
        self.result["whole_run"] = summary(self.stream.stop())
        self.result["load_average"] = _load()

    def kill(self, trial: int) -> None:
        before = self.placed()
        nodes = sorted({node for node, _ in before.values()})
        victim = nodes[trial % len(nodes)]
        lost = sorted(i for i, (node, _) in before.items() if node == victim)
        dead = self.address[victim]
        log(f"trial {trial}: killing {victim} (running {', '.join(lost)}); load {_load()}")
        t_kill = time.monotonic()
        self.lab.kill_node(victim)
        wait_for(f"HAProxy marks {victim}'s servers down", lambda: not any(
            ep.startswith(f"{dead}:") for ep in self.servers_up()), 30, every=0.05)
        t_down = time.monotonic()
        at_down = {(s.name, s.address): s.sessions for s in haproxy_servers(self.stats)
                   if s.address.split(":")[0] == dead}

        def moved():
            now = self.placed()
            done = all(i in now and now[i][0] != victim for i in lost)
            return now if done else None
        now = wait_for(f"{', '.join(lost)} running elsewhere", moved, 180, every=0.5)
        t_moved = time.monotonic()
        wait_for(f"traffic on the moved {', '.join(lost)}", lambda: all(
            self.answered(i, now[i][1], t_moved) for i in lost), 30, every=0.05)
        moved_answer = time.monotonic() - t_moved
        time.sleep(3)
        sent_after_down = sum(max(0, s.sessions - at_down[(s.name, s.address)])
                              for s in haproxy_servers(self.stats)
                              if (s.name, s.address) in at_down)
        t_after = time.monotonic() - 3
        after = summary(self.stream.snapshot(since=t_after))
        since_down = summary(self.stream.snapshot(since=t_down))
        neighbours = {i for i, (node, _) in now.items() if i not in lost and
                      node in {now[x][0] for x in lost}}
        figures = self.record(
            f"kill {trial}", t_kill, victim=victim, lost=lost,
            moved_to={i: now[i][0] for i in lost}, next_to=sorted(neighbours),
            kill_to_marked_down_s=round(t_down - t_kill, 2),
            longest_gap_after_down_s=since_down["longest_gap_s"],
            failed_after_down=since_down["failed"],
            kill_to_moved_running_s=round(t_moved - t_kill, 2),
            moved_running_to_first_answer_s=round(moved_answer, 2),
            sessions_to_dead_after_down=sent_after_down,
            answered_by_dead_after_down=sum(r.ok and r.answer.split(" ")[-1].startswith(
                f"{dead}:") for r in self.stream.snapshot(since=t_down)),
            live=_pairs({i: ep for i, (_, ep) in now.items()}),
            answering_after=sorted(after["answers"]),
            failed_after=after["failed"])
        self.result["kills"].append(figures)
        # the victim boots again (empty: its instances live elsewhere now)
        self.lab.restart_node(victim)
        wait_for(f"{victim} back and empty", lambda: all(
            node != victim for node, _ in self.placed().values()), 60)
        wait_for(f"{victim} ready", lambda: self.node_ready(victim), 120, every=1)
        time.sleep(5)

    def node_ready(self, node: str) -> bool:
        info = load_snapshot(self.api, self.store).nodes.get(node)
        return info is not None and info.state == "ready"

    def scale_up(self, count: int) -> None:
        """Scale up; for each new instance the time from its record running (as polled here)
        to its first answer through HAProxy at its address:port."""
        before = set(self.running())
        t0 = time.monotonic()
        submit(self.store, front_spec(count))
        seen: dict[str, tuple[str, float]] = {}  # new instance -> (address:port, running at)
        first: dict[str, float] = {}
        deadline = t0 + 420  # a playbook run per node: minutes at load 40
        while time.monotonic() < deadline and (len(seen) < count - len(before)
                                               or len(first) < len(seen)):
            for i, ep in self.running().items():
                if i not in before and i not in seen:
                    seen[i] = (ep, time.monotonic())
            for i, (ep, at) in seen.items():
                if i not in first and self.answered(i, ep, at):
                    first[i] = round(time.monotonic() - at, 2)
            time.sleep(0.1)
        if len(first) < count - len(before):
            raise SystemExit(f"bench/lb.py: scale to {count}: new instances running "
                             f"{sorted(seen)}, answering {sorted(first)} within 420s")
        running = wait_for(f"{count} instances running", self.running_count(count), 60)
        wait_for(f"HAProxy serving {count}", lambda: self.servers_up() == set(running.values()),
                 60)
        time.sleep(3)
        self.record("scale-up", t0, running=_pairs(running), new=sorted(first),
                    running_to_first_answer_s=first,
                    slowest_first_answer_s=max(first.values()),
                    nodes_used=len({ep.split(":")[0] for ep in running.values()}),
                    done_s=round(time.monotonic() - 3 - t0, 2))

    def scale(self, name: str, count: int) -> None:
        """Scale to `count`; the phase ends when HAProxy serves exactly the running ones."""
        t0 = time.monotonic()
        submit(self.store, front_spec(count))
        running = wait_for(f"{count} instances running", self.running_count(count), 180,
                           every=0.5)
        wait_for(f"HAProxy serving {count}", lambda: self.servers_up() == set(running.values()),
                 60)
        time.sleep(3)
        self.record(name, t0, running=_pairs(running),
                    done_s=round(time.monotonic() - 3 - t0, 2))

    def rolling_update(self, count: int) -> None:
        """A new version of every instance (update.max_parallel 1, the default)."""
        t0 = time.monotonic()
        new = front_spec(count, version=2)
        submit(self.store, new)

        def updated():
            records = [r for r in load_snapshot(self.api, self.store).records.values()
                       if r.alloc.job == JOB]
            done = len(records) == count and all(
                r.alloc.state == "running" and r.alloc.spec_digest == new.digest()
                and r.previous is None for r in records)
            return self.running() if done else None
        running = wait_for("every instance on the new version", updated, 300, every=0.5)
        wait_for("HAProxy serving the new instances", lambda: self.servers_up() ==
                 set(running.values()), 60)
        time.sleep(3)
        self.record("rolling-update", t0, running=_pairs(running), updated=len(running),
                    done_s=round(time.monotonic() - 3 - t0, 2))


def _pairs(running: dict[str, str]) -> list[str]:
    """instance -> address:port as the sorted answers they give: "front-1 10.77.0.2:21034"."""
    return sorted(f"{i} {ep}" for i, ep in running.items())


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def report(result: dict) -> None:
    print(f"\nWalle lb benchmark: HAProxy on {LB_NODE}, client stream {result['rate']:g} "
          f"requests/s; load average {_load()}, {os.cpu_count()} CPUs")
    print(f"{'phase':<12} {'sent':>6} {'failed':>7} {'longest gap s':>14}  notes")
    for name, p in result["phases"].items():
        notes = ", ".join(f"{k} {v}" for k, v in p.items() if k.endswith("_s") and
                          k not in ("longest_gap_s", "slowest_s")
                          or k.startswith(("sessions", "failed_after")))
        print(f"{name:<12} {p['sent']:>6} {p['failed']:>7} {p['longest_gap_s']:>14.2f}  {notes}")
    whole = result.get("whole_run")
    if whole:
        print(f"{'whole run':<12} {whole['sent']:>6} {whole['failed']:>7} "
              f"{whole['longest_gap_s']:>14.2f}  errors {whole['errors'] or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1, help="node kills (1..5)")
    parser.add_argument("--rate", type=float, default=20.0, help="client requests per second")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="the stream stops by itself after this")
    parser.add_argument("--lab", default="benchlb")
    parser.add_argument("--json", help="write every figure and check to this file")
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the lab needs nspawn, mounts and a bridge")
    if not 1 <= args.trials <= 5 or not 1 <= args.rate <= 200:
        parser.error("--trials 1..5, --rate 1..200")
    # a SIGTERM (a timeout around the bench) ends it through the clean-up below, lab down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(args)
    done = False
    try:
        bench.setup()
        bench.run()
        done = True
    finally:
        if hasattr(bench, "stream"):
            bench.stream.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(bench.result, indent=2, sort_keys=True))
            if not done:  # the schedulers' and the stand-in's logs outlive the lab
                keep = Path(args.json).with_suffix(".logs")
                keep.mkdir(exist_ok=True)
                for log_file in bench.lab.dir.glob("*.log"):
                    shutil.copy(log_file, keep / log_file.name)
                log(f"lab logs kept in {keep}")
        if not args.keep:
            bench.lab.down()
    report(bench.result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
