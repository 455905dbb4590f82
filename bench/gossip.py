"""Serf failure detection by timing profile (prints figures; not a test).

    python bench/gossip.py [--agents 4] [--trials 5] [--profiles lan,local] [--quiet-s 60]

The lab's membership is Serf (the Consul stand-in reads `serf members`), and roles/consul sets
the same gossip timings for Consul (gossip_lan) and, as a profile, for Serf. This measures the
gossip part alone, without a lab: `--agents` Serf agents on 127.0.0.1 (ports from 27946), one
of them the observer. Per profile and trial: SIGKILL one agent, time until the observer lists
it `failed` (what the stand-in turns into serfHealth critical, plus its 0.25 s poll), then start
it again and wait until it is `alive`. Then, for `--quiet-s` seconds with every agent alive,
count false positives: any member the observer lists as anything but `alive`. Run it next to
the machine's usual load: a false positive under load is what the tuning must not cause.
Standard library and the serf binary only (no walle import, no PYTHONPATH), so its two
printing helpers are its own rather than failover.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_PORT = 27946
POLL = 0.05


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


class Cluster:
    def __init__(self, count: int, profile: str, workdir: Path):
        self.count, self.profile, self.workdir = count, profile, workdir
        self.procs: dict[int, subprocess.Popen] = {}

    def bind(self, i: int) -> str:
        return f"127.0.0.1:{BASE_PORT + 2 * i}"

    def rpc(self, i: int) -> str:
        return f"127.0.0.1:{BASE_PORT + 2 * i + 1}"

    def start(self, i: int) -> None:
        argv = ["serf", "agent", "-node", f"g{i}", "-bind", self.bind(i), "-rpc-addr",
                self.rpc(i), "-profile", self.profile, "-log-level", "err"]
        if i:
            argv += ["-retry-join", self.bind(0), "-retry-interval", "1s"]
        with open(self.workdir / f"g{i}.log", "ab") as out:
            self.procs[i] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for i in list(self.procs):
            self.kill(i)

    def members(self) -> dict[str, str]:
        """name -> status, as the observer (agent 0) sees them."""
        out = subprocess.run(["serf", "members", "-rpc-addr", self.rpc(0), "-format", "json"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode:
            return {}
        return {m["name"]: m["status"] for m in json.loads(out.stdout)["members"]}


def wait(condition, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError, KeyError):
            if condition():
                return time.monotonic() - start
        time.sleep(POLL)
    return None


def measure(profile: str, args) -> tuple[list[float], int, int]:
    with tempfile.TemporaryDirectory(prefix="walle-gossip-") as tmp:
        cluster = Cluster(args.agents, profile, Path(tmp))
        try:
            for i in range(args.agents):
                cluster.start(i)
            names = {f"g{i}" for i in range(args.agents)}
            if wait(lambda: all(cluster.members().get(n) == "alive" for n in names), 60) \
                    is None:
                raise SystemExit(f"{profile}: the agents did not all join within 60 s")
            detections = []
            for trial in range(args.trials):
                victim = 1 + trial % (args.agents - 1)
                cluster.kill(victim)
                took = wait(lambda v=victim: cluster.members().get(f"g{v}") == "failed", 60)
                log(f"{profile} trial {trial}: g{victim} failed after "
                    f"{'-' if took is None else f'{took:.2f}s'} (load {load()})")
                if took is not None:
                    detections.append(took)
                cluster.start(victim)
                wait(lambda v=victim: cluster.members().get(f"g{v}") == "alive", 60)
            flaps, polls, end = 0, 0, time.monotonic() + args.quiet_s
            while time.monotonic() < end:
                with contextlib.suppress(subprocess.TimeoutExpired, ValueError, KeyError):
                    seen = cluster.members()
                    polls += 1
                    bad = {n: s for n, s in seen.items() if s != "alive"}
                    if bad:
                        flaps += 1
                        log(f"{profile}: false positive {bad} (load {load()})")
                time.sleep(0.2)
            return detections, flaps, polls
        finally:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--profiles", default="lan,local")
    parser.add_argument("--quiet-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    if not 3 <= args.agents <= 20:
        parser.error("--agents 3..20")
    load_before = load()
    rows = {}
    for profile in args.profiles.split(","):
        rows[profile] = measure(profile, args)
    print(f"\nSerf failure detection, {args.agents} agents on 127.0.0.1 (seconds, kill -> "
          f"the observer lists the agent failed)")
    print(f"load average (1/5/15 min): before {load_before}, after {load()}; "
          f"{os.cpu_count()} CPUs")
    print(f"  {'profile':<10}{'median':>7}{'min':>7}{'max':>7}  n  false positives "
          f"(polls with a live member not alive, over {args.quiet_s:.0f} s)")
    for profile, (values, flaps, polls) in rows.items():
        spread = (f"{statistics.median(values):7.2f}{min(values):7.2f}{max(values):7.2f}"
                  if values else "      -      -      -")
        print(f"  {profile:<10}{spread}  {len(values)}  {flaps} of {polls}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
