"""Traffic through HAProxy while the pool changes under it (prints figures; not a test).

    sudo .venv/bin/python bench/lb.py [--trials 1] [--rate 20] [--json FILE] [--keep]

Builds its own lab of 5 nodes: node5 runs HAProxy (roles/lb, the `lb` group), node1-4 run a
service `front` whose spec asks for `service.lb: {port: 80}` and whose instances answer with
their node's address. Instances bind one static port (dynamic ports are not built yet), so one
per node, at most 4. One client stream (--rate requests/s, a new connection each, bounded in
count and time) goes through HAProxy for the whole run, and each phase's window of it is
summed up: requests sent, failed, the longest gap between two successful answers.
  steady      2 instances, a few seconds of traffic.
  scale-up    2 -> 3: time from the new record running to its first answer through HAProxy.
  kill        (each trial) hard kill of a node running an instance: time until HAProxy marks
              its server down; sessions HAProxy sent the dead server after that (must be 0);
              the scheduler moves the instance to the spare node: time to its first answer;
              which nodes answer afterwards (every live instance, only those). After each
              trial the killed node boots again and becomes the spare.
  scale-full  3 -> 4 (every worker): the returned node takes traffic.
  scale-down  4 -> 2: two instances leave the pool and drain (stop.drain) before SIGTERM;
              a failure here is a request cut by a stop.
  rolling-update  a new version of the 2 instances (one at a time), each leaving the pool
              and draining before it is stopped or restarted.
`--json FILE` writes every figure and check (tests/lab/test_lb_lab.py asserts on it). The lab
is removed at the end unless --keep. See bench/README.md for measured figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
from walle.service.cluster import load_snapshot

JOB, LB_NODE, LB_PORT, STATS_PORT, APP_PORT = "front", "node5", 80, 8404, 8080
WORKERS = [f"node{i}" for i in range(1, 5)]
# answers GET with the address it was reached on; one line (job arguments hold no newline)
ANSWER = "; ".join([
    "import http.server as h",
    "B = lambda s: s.connection.getsockname()[0].encode() + bytes([10])",
    "R = lambda s: (s.send_response(200), s.send_header('Content-Length', str(len(B(s)))), "
    "s.end_headers(), s.wfile.write(B(s)))",
    "H = type('H', (h.BaseHTTPRequestHandler,), {'do_GET': R, 'log_message': lambda s, *a: 0})",
    f"h.ThreadingHTTPServer(('', {APP_PORT}), H).serve_forever()",
])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def front_spec(count: int, version: int = 1):
    return parse_spec({
        "name": JOB, "kind": "service", "count": count, "strategy": "spread",
        "resources": {"cpu": "0.05-0.5", "memory": "32M-96M"},
        "runtime": {"command": "/usr/bin/python3", "args": ["-c", ANSWER], "working_dir": "/tmp",
                    "env": {"FRONT_VERSION": str(version)}},
        "constraints": [{"operator": "distinct_hosts"},
                        {"attribute": "name", "operator": "ne", "value": LB_NODE}],
        "health": {"type": "http", "path": "/", "port": APP_PORT, "interval": "1s",
                   "timeout": "1s"},
        "stop": {"timeout": "5s"},  # stop.drain: the default (5 s)
        "service": {"port": APP_PORT, "lb": {"port": LB_PORT}},
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
        self.lab.up(5)
        addr = self.lab.start_consul()
        extra = self.lab.dir / "lb.yml"
        extra.write_text(yaml.safe_dump({"lb": {"hosts": {LB_NODE: None}}}))
        log("provisioning with site.yml (HAProxy on node5) ...")
        self.site_yml(extra)
        # the lb role is idempotent: a second run on the lb host changes nothing
        recap = re.search(rf"^{LB_NODE}\s+: ok=\d+\s+changed=(\d+)",
                          self.site_yml(extra, "--limit", LB_NODE), re.MULTILINE)
        self.result["lb_host_changed_on_second_run"] = int(recap[1]) if recap else None
        start_schedulers(self.lab, addr)
        self.api = ConsulApi(ConsulConfig.from_env(addr=addr))
        self.store = StateStore(self.api)
        self.address = {n.name: n.address for n in self.lab.nodes}
        self.node_of = {a: n for n, a in self.address.items()}
        self.stats = f"http://{self.address[LB_NODE]}:{STATS_PORT}/stats"
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

    # probes ----------------------------------------------------------------------------
    def running(self) -> dict[str, int]:
        """node -> slot of the job's running instances."""
        records = load_snapshot(self.api, self.store).records.values()
        return {r.alloc.node: r.alloc.slot for r in records
                if r.alloc.job == JOB and r.alloc.state == "running"}

    def running_count(self, count: int) -> Callable:
        return lambda: (lambda r: r if len(r) == count else None)(self.running())

    def servers_up(self) -> set[str]:
        return {self.node_of.get(s.address.split(":")[0], s.address)
                for s in haproxy_servers(self.stats) if s.backend == f"walle-{JOB}"
                and s.status.startswith("UP")}

    def answered_by(self, node: str, since: float) -> Callable:
        return lambda: any(r.answer == self.address[node]
                           for r in self.stream.snapshot(since=since))

    def record(self, name: str, since: float, until: float = float("inf"), **extra) -> dict:
        figures = summary(self.stream.snapshot(since, until))
        figures["answers"] = {self.node_of.get(a, a): n for a, n in figures["answers"].items()}
        figures.update(extra)
        self.result["phases"][name] = figures
        log(f"{name}: sent {figures['sent']}, failed {figures['failed']}, longest gap "
            f"{figures['longest_gap_s']:.2f}s, answers {figures['answers']}"
            + "".join(f", {k} {v}" for k, v in extra.items()))
        return figures

    # the run ---------------------------------------------------------------------------
    def run(self) -> None:
        submit(self.store, front_spec(2))
        first = wait_for("2 instances running", self.running_count(2), 240, every=1)
        wait_for("HAProxy serving both", lambda: self.servers_up() >= set(first), 60)
        self.stream = Stream(f"http://{self.address[LB_NODE]}:{LB_PORT}/", rate=self.args.rate,
                             max_requests=int(self.args.rate * self.args.max_seconds),
                             max_seconds=self.args.max_seconds).start()
        t0 = time.monotonic()
        time.sleep(4)
        self.record("steady", t0, running=sorted(first))
        self.scale_up(first)
        for trial in range(self.args.trials):
            self.kill(trial)
        self.scale("scale-full", 4)
        self.scale("scale-down", 2)
        self.rolling_update(2)
        self.result["whole_run"] = summary(self.stream.stop())

    def scale_up(self, before: dict[str, int]) -> None:
        t0 = time.monotonic()
        submit(self.store, front_spec(3))
        three = wait_for("3 instances running", self.running_count(3), 180, every=0.5)
        (new,) = set(three) - set(before)
        t_running = time.monotonic()
        wait_for(f"traffic on {new}", self.answered_by(new, t_running), 30, every=0.05)
        first_answer = time.monotonic() - t_running
        time.sleep(2)
        self.record("scale-up", t0, new_node=new, running_to_first_answer_s=round(
            first_answer, 2), running=sorted(three))

    def kill(self, trial: int) -> None:
        before = self.running()
        victim = sorted(before)[trial % len(before)]
        spare = sorted(set(WORKERS) - set(before))[0]
        log(f"trial {trial}: killing {victim} (spare {spare}); load {_load()}")
        t_kill = time.monotonic()
        self.lab.kill_node(victim)
        wait_for(f"HAProxy marks {victim} down", lambda: victim not in self.servers_up(), 30,
                 every=0.05)
        t_down = time.monotonic()
        dead = self.address[victim]
        at_down = {(s.name, s.address): s.sessions for s in haproxy_servers(self.stats)
                   if s.address.split(":")[0] == dead}
        wait_for(f"the lost instance running on {spare}", lambda: spare in self.running(), 180,
                 every=0.5)
        t_moved = time.monotonic()
        wait_for(f"traffic on {spare}", self.answered_by(spare, t_moved), 30, every=0.05)
        moved_answer = time.monotonic() - t_moved
        time.sleep(3)
        sent_after_down = sum(max(0, s.sessions - at_down[(s.name, s.address)])
                              for s in haproxy_servers(self.stats)
                              if (s.name, s.address) in at_down)
        t_after = time.monotonic() - 3
        after = summary(self.stream.snapshot(since=t_after))
        live = sorted(set(before) - {victim} | {spare})
        figures = self.record(
            f"kill {trial}", t_kill, victim=victim, spare=spare,
            kill_to_marked_down_s=round(t_down - t_kill, 2),
            longest_gap_after_down_s=summary(self.stream.snapshot(since=t_down))[
                "longest_gap_s"],
            failed_after_down=summary(self.stream.snapshot(since=t_down))["failed"],
            kill_to_moved_running_s=round(t_moved - t_kill, 2),
            moved_running_to_first_answer_s=round(moved_answer, 2),
            sessions_to_dead_after_down=sent_after_down,
            answered_by_dead_after_down=sum(r.answer == dead for r in self.stream.snapshot(
                since=t_down)),
            live=live,
            answering_after=sorted(self.node_of.get(a, a) for a in after["answers"]),
            failed_after=after["failed"])
        self.result["kills"].append(figures)
        # the victim boots again and becomes the spare
        self.lab.restart_node(victim)
        wait_for(f"{victim} back and empty", lambda: victim not in self.running(), 60)
        wait_for(f"{victim} ready", lambda: self.node_ready(victim), 120, every=1)
        time.sleep(5)

    def node_ready(self, node: str) -> bool:
        info = load_snapshot(self.api, self.store).nodes.get(node)
        return info is not None and info.state == "ready"

    def scale(self, name: str, count: int) -> None:
        """Scale to `count`; the phase ends when HAProxy serves exactly the running ones."""
        t0 = time.monotonic()
        submit(self.store, front_spec(count))
        running = wait_for(f"{count} instances running", self.running_count(count), 180,
                           every=0.5)
        wait_for(f"HAProxy serving {count}", lambda: self.servers_up() == set(running), 60)
        time.sleep(3)
        self.record(name, t0, running=sorted(running),
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
            return {r.alloc.node: r.alloc.slot for r in records} if done else None
        running = wait_for("every instance on the new version", updated, 300, every=0.5)
        wait_for("HAProxy serving the new instances", lambda: self.servers_up() ==
                 set(running), 60)
        time.sleep(3)
        self.record("rolling-update", t0, running=sorted(running), updated=len(running),
                    done_s=round(time.monotonic() - 3 - t0, 2))


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
    bench = Bench(args)
    try:
        bench.setup()
        bench.run()
    finally:
        if hasattr(bench, "stream"):
            bench.stream.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(bench.result, indent=2, sort_keys=True))
        if not args.keep:
            bench.lab.down()
    report(bench.result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
