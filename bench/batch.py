"""Cost of one placement batch across 1, 5, 10 and 20 lab nodes (prints figures; not a test).

    sudo PYTHONPATH=scheduler .venv/bin/python bench/batch.py [--nodes 1,5,10,20] [--trials 3]

Boots its own lab (`--lab batch`, the largest node count; no site.yml: place.yml needs only
systemd and python3 on the nodes) and a Consul stand-in in this process with one agent
endpoint per node (each node registers with "its" agent, as with a real Consul client). Per
node count N and trial: one place.yml run (the executor's playbook, through the runner's own
arguments) of a fresh service with one instance on each of node1..N (examples/web.yml
renamed: a python HTTP server with an HTTP check), then stop.yml of it. Figures per batch:
  batch     ansible-playbook start -> end (what the leader waits for)
  startup   start -> the first task starts (ansible-playbook's own start-up: Python, the
            collection, the inventory, the play)
  tasks     per task, median over hosts of its duration; the remote round trips
  passing   start -> every instance passes its check in the stand-in
  registered -> passing   per node, its registration task's end -> its instance passing
            (median over nodes): Consul's first-run stagger (0..interval) unless the node's
            own probe saw the check pass (`--probe-wait 0` turns that off, for comparison)
  stop      the stop.yml batch
and seconds per node (batch / N). The machine's load is printed with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from datetime import datetime

import ansible_runner

from failover import _load as load  # bench/ is sys.path[0]: failover.py's service and helpers
from failover import log, service_spec
from walle.adapters.runner import runner_args
from walle.core.model import Grant
from walle.lab.consul_standin.server import start_in_thread
from walle.lab.nodes import Lab, LabError
from walle.service.params import instance_vars, stop_vars

MIB = 1024**2
GRANT = Grant(cpu_weight=25, cpu_quota_percent=50, memory_min=32 * MIB, memory_high=96 * MIB,
              memory_max=128 * MIB)
PORT = 8090
REGISTER_TASK = "Consul service registration"  # playbooks/tasks/consul_service.yml


class Timed:
    """An ansible-runner event handler that keeps when the first task started and each
    task's duration per host (ansible-runner's event_data start/end)."""

    def __init__(self):
        self.first_task: float | None = None
        self.tasks: dict[str, list[float]] = defaultdict(list)
        self.registered: dict[str, float] = {}  # host -> when its registration task ended

    def handle(self, event: dict) -> bool:
        kind, data = event.get("event", ""), event.get("event_data") or {}
        if kind == "playbook_on_task_start" and self.first_task is None:
            self.first_task = time.monotonic()
        if kind == "runner_on_ok" and data.get("task") == REGISTER_TASK:
            self.registered.setdefault(data.get("host", "?"), time.monotonic())
        if kind in ("runner_on_ok", "runner_on_failed") and data.get("start") and \
                data.get("end"):
            seconds = (datetime.fromisoformat(data["end"])
                       - datetime.fromisoformat(data["start"])).total_seconds()
            self.tasks[data.get("task", "?")].append(seconds)
        return False


def run(playbook: str, inventory: str, extravars: dict, hosts: list[str]) -> tuple[float,
                                                                                  Timed, str]:
    timed = Timed()
    with tempfile.TemporaryDirectory(prefix="walle-bench-batch-") as private_dir:
        kwargs = runner_args(playbook, inventory, extravars, hosts, private_dir)
        start = time.monotonic()
        runner = ansible_runner.run(**kwargs, event_handler=timed.handle)
        took = time.monotonic() - start
    timed.first_task = (timed.first_task or start + took) - start
    return took, timed, runner.status


def passing(standin, service: str) -> set[str]:
    """The nodes whose instance of `service` passes."""
    host, port = standin.http_addr
    url = f"http://{host}:{port}/v1/health/service/{service}?passing=1"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return {entry["Node"]["Node"] for entry in json.load(answer)}


class PassingWatch:
    """Polls (50 ms) while the playbook runs: when each node's instance first passed."""

    def __init__(self, standin, service: str, count: int):
        self.standin, self.service, self.count = standin, service, count
        self.first: dict[str, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set() and len(self.first) < self.count:
            with contextlib.suppress(OSError, ValueError):
                for node in passing(self.standin, self.service):
                    self.first.setdefault(node, time.monotonic())
            time.sleep(0.05)

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)
        self.done.set()


def trial(lab: Lab, standin, n: int, i: int,
          probe_wait: float | None) -> dict[str, float] | None:
    nodes = [f"node{k}" for k in range(1, n + 1)]
    name = f"bb{n}x{i}"
    spec = service_spec(name, n, PORT, "2s")
    address = {node.name: node.address for node in lab.nodes}
    agents = {node: "http://{}:{}".format(*standin.agent_addrs[node]) for node in nodes}
    # with a manifest, as the executor places every instance
    batch = {node: [{**instance_vars(spec, slot, address[node], GRANT, agents[node]),
                     "manifest": {"job": name, "slot": slot, "spec_digest": spec.digest()}}]
             for slot, node in enumerate(nodes)}
    extravars = {"walle_batch": batch}
    if probe_wait is not None:
        extravars["walle_check_probe_wait"] = probe_wait
    start = time.monotonic()
    watch = PassingWatch(standin, name, n)
    took, timed, status = run("place.yml", str(lab.inventory_path), extravars, nodes)
    watch.wait(30)
    seen = max(watch.first.values()) - start if len(watch.first) == n else None
    after_registration = [watch.first[h] - t for h, t in timed.registered.items()
                          if h in watch.first]
    stop = {node: [stop_vars(name, slot, agents[node])] for slot, node in enumerate(nodes)}
    stop_took, _, stop_status = run("stop.yml", str(lab.inventory_path), {"walle_batch": stop},
                                    nodes)
    if status != "successful" or stop_status != "successful":
        log(f"{n} nodes trial {i}: place {status}, stop {stop_status}")
        return None
    figures = {"batch": took, "startup": timed.first_task, "per node": took / n,
               "stop": stop_took}
    if seen is not None:
        figures["passing"] = seen
    if after_registration:
        figures["registered -> passing"] = statistics.median(after_registration)
    for task, values in timed.tasks.items():
        figures[f"task: {task}"] = statistics.median(values)
    log(f"{n} nodes trial {i} (load {load()}): "
        + ", ".join(f"{k} {v:.2f}s" for k, v in figures.items() if not k.startswith("task")))
    return figures


def boot(lab: Lab, count: int, tries: int = 3) -> None:
    """Nodes 1..count, booted step by step and again when one dies while booting: under load
    (25 on 2 cores) an nspawn boot now and then exits early; `Lab.up` boots only the nodes
    not running."""
    for attempt in range(1, tries + 1):
        try:
            lab.up(count)
            return
        except LabError as err:
            if attempt == tries:
                raise
            log(f"boot of {count} nodes, try {attempt}: {err}; booting the missing again")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="1,5,10,20", help="node counts, comma-separated")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--lab", default="batch")
    parser.add_argument("--probe-wait", type=float, help="walle_check_probe_wait for "
                        "place.yml (default: the playbook's, 1 s; 0: register checks "
                        "critical and wait for the agent's first run, as before issue 15)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    args = parser.parse_args(argv)
    counts = sorted({int(c) for c in args.nodes.split(",")})
    if os.geteuid() != 0:
        parser.error("run as root: the lab needs nspawn, mounts and a bridge")
    if not counts or counts[0] < 1 or counts[-1] > 50:
        parser.error("--nodes: counts 1..50")
    load_before = load()
    lab = Lab(args.lab, progress=log)
    results: dict[int, list[dict[str, float]]] = {}
    try:
        for n in counts:
            boot(lab, n)
            standin = start_in_thread(http=(lab.host_address, 0), dns=None,
                                      agents={node.name: (lab.host_address, 0)
                                              for node in lab.nodes})
            try:
                results[n] = [r for i in range(args.trials)
                              if (r := trial(lab, standin, n, i, args.probe_wait))]
            finally:
                standin.stop()
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    finally:
        report(results, load_before)
        if not args.keep:
            lab.down()
    return 0


def report(results: dict[int, list[dict[str, float]]], load_before: str) -> None:
    print("\nOne place.yml batch, one instance per node (seconds; median min max over trials)")
    print(f"load average (1/5/15 min): before {load_before}, after {load()}; "
          f"{os.cpu_count()} CPUs")
    keys = sorted({k for rows in results.values() for r in rows for k in r},
                  key=lambda k: (k.startswith("task"), k))
    for n, rows in results.items():
        print(f"\n{n} node(s), {len(rows)} trial(s)")
        for key in keys:
            values = [r[key] for r in rows if key in r]
            if values:
                print(f"  {key:<44}{statistics.median(values):7.2f}{min(values):7.2f}"
                      f"{max(values):7.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
