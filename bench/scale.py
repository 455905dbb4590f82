"""The real scheduler loop at data-center size, through the Consul HTTP API (prints figures).

    PYTHONPATH=scheduler .venv/bin/python bench/scale.py [--quick] [--sizes 10000:1000,...]
        [--no-node-death] [--no-data-dir] [--profile FILE]

What runs:
- the Consul stand-in (`python -m walle.lab.consul_standin`) in its own process, durable
  (`--data-dir` on a temporary directory: every write acknowledged only once fsynced);
- a simulated fleet: N catalog nodes with Walle's node meta (bench/placement.py's node types:
  16..64 cores, 64..384 GiB, some GPUs, 3 zones, racks of 40), registered through `/v1/txn`
  (Node + serfHealth Check ops, 64 nodes per transaction) as Consul's leader would from Serf;
- the real leader: `Scheduler.run_forever()` (leader lock, blocking-query watches, steps,
  `StateStore`, guarded CAS writes), in this process;
- a fake executor in place of the playbooks (no SSH): it registers each placed instance with
  a passing check through `/v1/txn` (Service + Check ops, 64 instances = 128 ops per write,
  Consul's limit), from 8 connections at once, as the nodes' agents would register them.

Workload: jobs of 1,000 instances (a smaller size: one job), each 0.25 core, 256 MiB, a TTL
check. Figures per size: submit -> every slot running (the moment the last `running` record
write is acknowledged), placements/s end to end, steps and their breakdown (Consul reads =
`SnapshotReader.load`, writes = guarded txns, executor = the fake registrations, reconcile = the
rest of the step), bytes the step read, bytes every read of the process took (watches
included), the scheduler process's peak RSS (bench bookkeeping and the fake executor
included), the stand-in's CPU seconds. Then, at the largest size, a node death: the node's
serfHealth turns critical (a transaction, as Consul's leader writes it when Serf reports the
member failed) and the figure is detection -> every lost instance re-planned and written
(pending on another node), then -> running there. The scheduler runs with node_down_grace=0
here: the grace (presence.py, 15 s by default, so that a cut-off node's fence has stopped its
instances first) is a safety wait, not work; production adds it to the figure.

The machine is shared: run it alone and read the load printed with the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import consul.std

from placement import make_nodes  # bench/placement.py: the same fleet
from standin_writes import start_standin  # bench/standin_writes.py
from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.jobspec import parse_spec
from walle.service.executor import NodeInstances, Outcome
from walle.service.scheduler import Scheduler, SchedulerConfig
from walle.service.state_cache import SnapshotReader

PER_TXN = 64  # instances (2 ops each) or nodes per transaction: Consul's 128-op limit
JOB_SIZE = 1000
CLIENTS = 8


# ----- the stand-in over plain keep-alive connections (the fleet's side, not the leader's) ---
class Fleet:
    """Writes the simulated nodes and their agents would make, from CLIENTS connections."""

    def __init__(self, port: int):
        self.port = port
        self._local = threading.local()
        self.pool = ThreadPoolExecutor(CLIENTS, thread_name_prefix="fleet")

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                  timeout=120)
        return conn

    def txn(self, ops: list[dict]) -> None:
        conn = self._conn()
        conn.request("PUT", "/v1/txn", body=json.dumps(ops))
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"txn answered {resp.status}: {body[:300]!r}")

    def txns(self, ops: list[dict], per_txn: int) -> None:
        chunks = [ops[i:i + per_txn] for i in range(0, len(ops), per_txn)]
        for future in [self.pool.submit(self.txn, chunk) for chunk in chunks]:
            future.result()

    def register_nodes(self, count: int, seed: int) -> list[str]:
        ops = []
        for node in make_nodes(count, random.Random(seed)):
            cap = node.capacity
            meta = {"walle_cpu": str(cap.cpu), "walle_memory": str(cap.memory),
                    "walle_disk": str(cap.disk), "walle_gpus": str(cap.gpus),
                    "walle_zone": node.zone, "walle_rack": node.rack}
            if node.datasets:
                meta["walle_datasets"] = ",".join(sorted(node.datasets))
            k = int(node.name[4:])
            address = f"10.{100 + k // 65536}.{k // 256 % 256}.{k % 256}"
            ops.append({"Node": {"Verb": "set", "Node": {"Node": node.name,
                                                         "Address": address, "Meta": meta}}})
            ops.append(serf_health(node.name, "passing"))
        self.txns(ops, 2 * PER_TXN)
        return [n.name for n in make_nodes(count, random.Random(seed))]


def serf_health(node: str, status: str) -> dict:
    return {"Check": {"Verb": "set", "Check": {"Node": node, "CheckID": "serfHealth",
                                               "Name": "Serf Health Status",
                                               "Status": status}}}


class FleetExecutor:
    """The executor's interface without playbooks: a placed instance is registered with a
    passing check at once (what place.yml's register task and a passing check amount to)."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self.on_node: dict[str, set[str]] = defaultdict(set)
        self.seconds = 0.0
        self.placed = 0

    def place(self, items, addresses, replacing=()):
        started = time.perf_counter()
        ops, out = [], {}
        for alloc, spec in items:
            self.on_node[alloc.node].add(alloc.key)
            out[alloc.key] = Outcome(True)
            if spec.service is None:
                continue
            meta = {"walle_job": alloc.job, "walle_slot": str(alloc.slot),
                    "walle_digest": alloc.spec_digest, "walle_runtime": alloc.runtime_digest}
            ops.append({"Service": {"Verb": "set", "Node": alloc.node, "Service": {
                "ID": alloc.key, "Service": spec.service.name, "Meta": meta}}})
            ops.append({"Check": {"Verb": "set", "Check": {
                "Node": alloc.node, "CheckID": f"service:{alloc.key}", "Name": "ttl",
                "Status": "passing", "ServiceID": alloc.key}}})
        self.fleet.txns(ops, 2 * PER_TXN)
        self.placed += len(out)
        self.seconds += time.perf_counter() - started
        return out

    def _deregister(self, instances) -> dict[str, Outcome]:
        started = time.perf_counter()
        ops, out = [], {}
        for key, node in instances:
            self.on_node[node].discard(key)
            ops.append({"Service": {"Verb": "delete", "Node": node, "Service": {"ID": key}}})
            out[key] = Outcome(True)
        self.fleet.txns(ops, 2 * PER_TXN)
        self.seconds += time.perf_counter() - started
        return out

    def stop(self, allocs, jobs=None):
        return self._deregister([(a.key, a.node) for a in allocs])

    def stop_instances(self, instances, jobs=None):
        return self._deregister([(f"{job}-{slot}", node) for job, slot, node in instances])

    def probe_units(self, units):
        return {}

    def list_instances(self, nodes):
        return {n: NodeInstances(frozenset(self.on_node.get(n, ())),
                                 {f"walle-{i}.service": "active"
                                  for i in self.on_node.get(n, ())})
                for n in nodes}

    def regrant(self, items):
        return {a.key: Outcome(True) for a, _ in items}


# ----- instrumentation --------------------------------------------------------------------
@dataclass
class Meter:
    """What the leader did: per-step timings, bytes read, and every record write it made."""

    loop_thread: int | None = None
    steps: int = 0
    step_s: float = 0.0
    step_cpu_s: float = 0.0  # CPU time of the loop thread in its steps (load-independent)
    read_s: float = 0.0
    write_s: float = 0.0
    exec_s: float = 0.0
    txns: int = 0
    write_ops: int = 0
    step_bytes: int = 0  # read by the loop thread (the steps)
    all_bytes: int = 0  # read by every thread (the watches too)
    state: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (node, state)
    running: int = 0
    in_step: threading.Event = field(default_factory=threading.Event)
    profiler: cProfile.Profile | None = None  # of the leader's steps
    # per step: monotonic times of its start, the end of its read, the start and end of its
    # decision (the node death's breakdown)
    marks: list[dict[str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def reset(self) -> None:
        self.marks = []
        self.steps = self.txns = self.write_ops = self.step_bytes = self.all_bytes = 0
        self.step_s = self.read_s = self.write_s = self.exec_s = self.step_cpu_s = 0.0

    def note_put(self, allocs, deletes) -> None:
        with self.changed:
            for a in allocs:
                before = self.state.get(a.key)
                self.running += (a.state == "running") - bool(before and before[1] == "running")
                self.state[a.key] = (a.node, a.state)
            for a in deletes:
                before = self.state.pop(a.key, None)
                self.running -= bool(before and before[1] == "running")
            self.changed.notify_all()

    def step_ended(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.in_step.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)

    def wait_for(self, done, timeout: float) -> float | None:
        """The monotonic time at which `done()` became true, None on timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)
            return time.monotonic()


def instrument(scheduler: Scheduler, meter: Meter) -> Callable[[], None]:
    """Wrap the leader's reads, steps and writes with meters; returns what undoes the two
    class-level patches (the smoke test runs in a shared process)."""
    executor = scheduler.executor
    original_load = SnapshotReader.load
    original_step = scheduler.step
    original_write = scheduler.store.write_allocs
    original_txn = scheduler.store.txn

    original_plan = scheduler._plan

    def load(self):
        started = time.perf_counter()
        try:
            return original_load(self)
        finally:
            meter.read_s += time.perf_counter() - started
            if meter.marks:
                meter.marks[-1]["read_end"] = time.monotonic()

    def plan(*args, **kw):
        mark = meter.marks[-1] if meter.marks else {}
        mark["plan_start"] = time.monotonic()
        try:
            return original_plan(*args, **kw)
        finally:
            mark["plan_end"] = time.monotonic()

    def step():
        meter.loop_thread = threading.get_ident()
        meter.steps += 1
        meter.in_step.set()
        meter.marks.append({"start": time.monotonic()})
        exec_before = executor.seconds
        started, cpu_started = time.perf_counter(), time.thread_time()
        if meter.profiler is not None:
            meter.profiler.enable()
        try:
            return original_step()
        finally:
            if meter.profiler is not None:
                meter.profiler.disable()
            meter.step_s += time.perf_counter() - started
            meter.step_cpu_s += time.thread_time() - cpu_started
            meter.exec_s += executor.seconds - exec_before
            meter.in_step.clear()

    def write_allocs(put=(), delete=(), **kw):
        put, delete = list(put), list(delete)
        result = original_write(put, delete, **kw)
        if result.ok:
            meter.note_put(put, delete)
        return result

    def txn(ops, **kw):
        started = time.perf_counter()
        try:
            return original_txn(ops, **kw)
        finally:
            meter.write_s += time.perf_counter() - started
            meter.txns += -(-len(ops) // 63) if ops else 0
            meter.write_ops += len(ops)

    SnapshotReader.load = load
    scheduler.step = step
    scheduler._plan = plan
    scheduler.store.write_allocs = write_allocs
    scheduler.store.txn = txn
    original_response = consul.std.HTTPClient.response

    def response(self, resp, raw=False):
        size = len(resp.content)
        with meter.lock:
            meter.all_bytes += size
            if threading.get_ident() == meter.loop_thread:
                meter.step_bytes += size
        return original_response(self, resp, raw)

    consul.std.HTTPClient.response = response

    def undo() -> None:
        SnapshotReader.load = original_load
        consul.std.HTTPClient.response = original_response
    return undo


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def job_spec(name: str, count: int):
    return parse_spec({
        "name": name, "kind": "service", "count": count,
        "resources": {"cpu": "0.25", "memory": "256M"},
        "runtime": {"command": "/usr/bin/python3", "args": ["-m", "http.server"]},
        "service": {"name": name}, "health": {"type": "ttl", "ttl": "30s"},
    })


# ----- one size ---------------------------------------------------------------------------
@dataclass
class Run:
    instances: int
    nodes: int
    figures: dict = field(default_factory=dict)


def run_size(instances: int, nodes: int, *, node_death: bool, data_dir: bool,
             timeout: float, profile: str | None) -> Run:
    run = Run(instances, nodes)
    tmp = tempfile.TemporaryDirectory(prefix="walle-scale-")
    proc, port = start_standin(os.path.join(tmp.name, "consul") if data_dir else None)
    scheduler = thread = None
    undo: Callable[[], None] = lambda: None  # noqa: E731
    try:
        fleet = Fleet(port)
        started = time.monotonic()
        names = fleet.register_nodes(nodes, seed=1)
        run.figures["fleet_register_s"] = time.monotonic() - started
        # generous timeouts: on a busy shared host a 100,000-check answer takes seconds
        api = ConsulApi(ConsulConfig.from_env(addr=f"http://127.0.0.1:{port}", timeout=60.0))
        meter = Meter()
        executor = FleetExecutor(fleet)
        config = SchedulerConfig(name="scale", inventory="unused", lock_delay=0, seed=7,
                                 node_down_grace=0.0, lock_ttl=60)
        scheduler = Scheduler(api, config, executor=executor)
        undo = instrument(scheduler, meter)
        thread = threading.Thread(target=scheduler.run_forever, daemon=True, name="leader")
        thread.start()
        while not scheduler.lock.is_leader:
            time.sleep(0.05)
        time.sleep(0.5)  # the first (empty) steps
        meter.reset()
        cpu_before, own_cpu_before = cpu_seconds(proc.pid), time.process_time()
        meter.profiler = cProfile.Profile() if profile else None
        store = StateStore(api)
        submitted = time.monotonic()
        left, k = instances, 0
        while left > 0:
            count = min(JOB_SIZE, left)
            assert store.put_job(job_spec(f"scale{k:03d}", count), 0)
            left, k = left - count, k + 1
        done = meter.wait_for(lambda: meter.running >= instances, timeout)
        meter.step_ended(timeout)  # the breakdown covers whole steps
        if meter.profiler:
            meter.profiler.dump_stats(profile)
            meter.profiler = None
        f = run.figures
        if done is None:
            f["timed_out_after_s"] = timeout
            f["running"] = meter.running
            done = time.monotonic()
        f["submit_to_running_s"] = done - submitted
        f["placements_per_s"] = meter.running / (done - submitted)
        f["steps"] = meter.steps
        f["step_s"] = meter.step_s
        f["reads_s"] = meter.read_s
        f["writes_s"] = meter.write_s
        f["executor_s"] = meter.exec_s
        f["reconcile_s"] = meter.step_s - meter.read_s - meter.write_s - meter.exec_s
        f["write_txns"] = meter.txns
        f["write_ops"] = meter.write_ops
        f["bytes_read_per_step"] = meter.step_bytes / max(1, meter.steps)
        f["bytes_read_all"] = meter.all_bytes
        f["scheduler_peak_rss_mib"] = rss_mib()
        f["standin_cpu_s"] = cpu_seconds(proc.pid) - cpu_before
        f["scheduler_cpu_s"] = time.process_time() - own_cpu_before
        f["step_cpu_s"] = meter.step_cpu_s
        if node_death:
            time.sleep(1.0)  # let the loop settle (health watch caught up)
            meter.profiler = cProfile.Profile() if profile else None
            f.update(kill_a_node(fleet, meter, names, timeout=min(timeout, 120)))
            meter.step_ended(timeout)
            if meter.profiler:
                meter.profiler.dump_stats(profile + ".death")
                meter.profiler = None
        f["scheduler_peak_rss_mib"] = rss_mib()
        return run
    finally:
        if scheduler is not None and thread is not None:
            scheduler.stop()  # run_forever steps down when its step ends
            thread.join(timeout=120)
        undo()
        proc.terminate()
        proc.wait(timeout=60)
        tmp.cleanup()


def quiet(meter: Meter, for_s: float, timeout: float) -> None:
    """Wait until the leader has not been in a step for `for_s` seconds (bounded): the node
    death then starts from an idle loop, and its figure is not a busy step's leftover."""
    deadline, idle_since = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        if meter.in_step.is_set():
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= for_s:
            return
        time.sleep(0.05)


def kill_a_node(fleet: Fleet, meter: Meter, names: list[str], timeout: float) -> dict:
    quiet(meter, 2.0, timeout)
    by_node = Counter(node for node, state in meter.state.values() if state == "running")
    victim = max(names, key=lambda n: by_node.get(n, 0))
    lost = [k for k, (node, _) in meter.state.items() if node == victim]
    meter.reset()
    killed = time.monotonic()
    fleet.txn([serf_health(victim, "critical")])
    detected = time.monotonic()  # the write is acknowledged: the leader's watch can see it

    def moved(states: tuple[str, ...]):
        return lambda: all(meter.state.get(k, (victim, ""))[0] != victim
                           and meter.state[k][1] in states for k in lost)

    planned = meter.wait_for(moved(("pending", "running")), timeout)
    running = meter.wait_for(moved(("running",)), timeout)
    breakdown = {}
    step = next((m for m in reversed(list(meter.marks)) if planned and m["start"] <= planned),
                None)
    if step is not None and {"read_end", "plan_start", "plan_end"} <= set(step):
        breakdown = {"death_to_step_s": step["start"] - detected,
                     "death_read_s": step["read_end"] - step["start"],
                     "death_before_plan_s": step["plan_start"] - step["read_end"],
                     "death_plan_s": step["plan_end"] - step["plan_start"],
                     "death_to_written_s": planned - step["plan_end"]}
    return {**breakdown, "death_lost_instances": len(lost),
            "death_detect_to_planned_s": (planned - detected) if planned else None,
            "death_detect_to_running_s": (running - detected) if running else None,
            "death_write_ack_s": detected - killed, "death_steps": meter.steps,
            "death_bytes_read_per_step": meter.step_bytes / max(1, meter.steps)}


# ----- report -----------------------------------------------------------------------------
def report(run: Run) -> None:
    f = run.figures
    print(f"\n== {run.instances:,} instances on {run.nodes:,} nodes "
          f"(load {os.getloadavg()[0]:.1f}) ==")
    if "timed_out_after_s" in f:
        print(f"  TIMED OUT after {f['timed_out_after_s']:.0f} s with {f['running']:,} running")
    print(f"  fleet registered in        {f['fleet_register_s']:8.1f} s")
    print(f"  submit -> all running      {f['submit_to_running_s']:8.1f} s   "
          f"{f['placements_per_s']:,.0f} placements/s")
    print(f"  steps (started)            {f['steps']:8d}     total {f['step_s']:.1f} s: "
          f"reads {f['reads_s']:.1f}, reconcile {f['reconcile_s']:.1f}, "
          f"writes {f['writes_s']:.1f}, executor {f['executor_s']:.1f}")
    print(f"  writes                     {f['write_txns']:8d} txns, {f['write_ops']:,} ops")
    print(f"  bytes read per step        {f['bytes_read_per_step'] / 1e6:8.2f} MB   "
          f"(all reads, watches included: {f['bytes_read_all'] / 1e6:.1f} MB)")
    print(f"  scheduler peak RSS         {f['scheduler_peak_rss_mib']:8.0f} MiB")
    print(f"  CPU: stand-in              {f['standin_cpu_s']:8.1f} s;  scheduler process "
          f"{f['scheduler_cpu_s']:.1f} s (its steps {f['step_cpu_s']:.1f} s; the rest: the "
          f"fake fleet's registrations, watches)")
    busy = f["standin_cpu_s"] + f["scheduler_cpu_s"]
    print(f"  placements per CPU-second  {run.instances / busy:8,.0f}     (stand-in + scheduler "
          f"CPU: what an idle machine would approach)")
    if "death_lost_instances" in f:
        planned, running = f["death_detect_to_planned_s"], f["death_detect_to_running_s"]
        print(f"  node death: {f['death_lost_instances']} instances lost; detection -> "
              f"re-planned and written {_s(planned)}, -> running {_s(running)} "
              f"({f['death_steps']} steps, {f['death_bytes_read_per_step'] / 1e6:.2f} MB "
              f"read per step)")
        if "death_read_s" in f:
            print(f"    that step: detection -> its start {f['death_to_step_s']:.2f} s, read "
                  f"{f['death_read_s']:.2f} s, health/moves/reaps {f['death_before_plan_s']:.2f}"
                  f" s, decide {f['death_plan_s']:.2f} s, stops + intent write "
                  f"{f['death_to_written_s']:.2f} s")


def _s(value: float | None) -> str:
    return "did not happen" if value is None else f"{value:.2f} s"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        instances, _, nodes = part.partition(":")
        out.append((int(instances), int(nodes)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000:1000,100000:10000",
                   help="instances:nodes,... (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="one small size (1000:100)")
    p.add_argument("--no-node-death", action="store_true")
    p.add_argument("--no-data-dir", action="store_true",
                   help="stand-in without persistence (not durable: for comparison only)")
    p.add_argument("--timeout", type=float, default=1800.0, help="per size, seconds")
    p.add_argument("--profile", help="cProfile the leader's steps of the last size into "
                   "FILE (and those of the node death into FILE.death)")
    args = p.parse_args(argv)
    sizes = [(1000, 100)] if args.quick else parse_sizes(args.sizes)
    print(f"bench/scale.py: load {os.getloadavg()}, {os.cpu_count()} CPUs, "
          f"stand-in {'without' if args.no_data_dir else 'with'} --data-dir")
    for i, (instances, nodes) in enumerate(sizes):
        last = i == len(sizes) - 1
        run = run_size(instances, nodes, node_death=last and not args.no_node_death,
                       data_dir=not args.no_data_dir, timeout=args.timeout,
                       profile=args.profile if last else None)
        report(run)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
