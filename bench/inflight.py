"""What batches beside the loop change: a node death while a long stop runs on another node.

    PYTHONPATH=scheduler .venv/bin/python bench/inflight.py [--inflight 0,4] [--trials 3]
        [--stop-seconds 20] [--nodes 10] [--count 40]

Per trial: a fresh Consul stand-in (its own process, bench/standin_writes.py), a simulated
fleet of --nodes catalog nodes and the real leader (`Scheduler.run_forever`: lock, watches,
steps, guarded writes) with `max_inflight_batches` N, its executor bench/scale.py's fake one
(no playbooks) except that a stop of the `hog` job takes --stop-seconds (a long drain, a slow
node). `hog` (1 instance) and `web` (--count instances) are placed; `hog` is scaled to 0 (its
stop starts and hangs), then the node holding the most `web` instances, not hog's, dies (its
serfHealth turns critical). Figures: death -> every lost `web` slot re-planned (its record
pending or running on another node) and -> running there, and how many lost instances were
re-planned onto the node of the slow stop. With N = 0 the leader waits for the stop first;
with N > 0 it plans at once, and only a placement onto the slow stop's node waits for it (one
batch per node at a time). node_down_grace is 0 (the production grace, 15 s, is a
safety wait that both modes add alike). Prints the load: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

from scale import Fleet, FleetExecutor, job_spec, serf_health  # bench/scale.py
from standin_writes import start_standin  # bench/standin_writes.py
from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.service import jobs
from walle.service.scheduler import Scheduler, SchedulerConfig

POLL = 0.05


class SlowStops(FleetExecutor):
    """A stop of `hog` takes `seconds` (bounded: the trial's end releases it)."""

    def __init__(self, fleet: Fleet, seconds: float):
        super().__init__(fleet)
        self.seconds_per_stop = seconds
        self.stopping: set[str] = set()  # nodes where a slow stop runs now
        self.release = threading.Event()

    def stop(self, allocs, jobs=None):
        allocs = list(allocs)
        slow = {a.node for a in allocs if a.job == "hog"}
        if slow:
            self.stopping |= slow
            self.release.wait(self.seconds_per_stop)
            self.stopping -= slow
        return super().stop(allocs, jobs)


def wait_for(what, timeout: float) -> float | None:
    """Poll `what()` every POLL s for at most `timeout` s: when it held, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return time.monotonic()
        time.sleep(POLL)
    return None


def trial(inflight: int, args) -> dict:
    proc, port = start_standin(None)
    scheduler = thread = executor = fleet = None
    try:
        fleet = Fleet(port)
        fleet.register_nodes(args.nodes, seed=1)
        api = ConsulApi(ConsulConfig.from_env(addr=f"http://127.0.0.1:{port}", timeout=30.0))
        store = StateStore(api)
        executor = SlowStops(fleet, args.stop_seconds)
        config = SchedulerConfig(name="inflight", inventory="unused", lock_delay=0, seed=7,
                                 node_down_grace=0.0, max_inflight_batches=inflight)
        scheduler = Scheduler(api, config, executor=executor)
        thread = threading.Thread(target=scheduler.run_forever, daemon=True, name="leader")
        thread.start()

        def where() -> dict[str, tuple[str, str]]:
            _, stored = store.allocs()
            return {f"{job}-{slot}": (a.state, a.node) for (job, slot), a in stored.items()}

        assert store.put_job(job_spec("hog", 1), 0)
        assert store.put_job(job_spec("web", args.count), 0)
        if wait_for(lambda: sum(s == "running" for s, _ in where().values())
                    == args.count + 1, 60) is None:
            raise SystemExit("the jobs did not all run within 60 s")
        jobs.scale(store, "hog", 0)
        if wait_for(lambda: executor.stopping, 30) is None:
            raise SystemExit("hog's stop did not start within 30 s")
        stop_began = time.monotonic()
        placed = where()
        on_node: dict[str, int] = {}
        for key, (_, node) in placed.items():
            if key.startswith("web-"):
                on_node[node] = on_node.get(node, 0) + 1
        victim = max((n for n in on_node if n not in executor.stopping), key=on_node.get)
        lost = [k for k, (_, n) in placed.items() if n == victim]
        slow_node = set(executor.stopping)
        fleet.txn([serf_health(victim, "critical")])
        died = time.monotonic()

        def moved(states: tuple[str, ...]):
            def check() -> bool:
                now = where()
                return all(k in now and now[k][1] != victim and now[k][0] in states
                           for k in lost)
            return check

        planned = wait_for(moved(("pending", "running")), args.stop_seconds + 60)
        after = where()
        onto_slow = sum(after.get(k, ("", ""))[1] in slow_node for k in lost)
        running = wait_for(moved(("running",)), args.stop_seconds + 60)
        return {"lost": len(lost), "into_stop_s": died - stop_began, "onto_slow": onto_slow,
                "planned_s": planned - died if planned else None,
                "running_s": running - died if running else None}
    finally:
        if executor is not None:
            executor.release.set()
        if scheduler is not None and thread is not None:
            scheduler.stop()
            thread.join(timeout=60)
        if fleet is not None:
            fleet.pool.shutdown()
        proc.terminate()
        proc.wait(timeout=30)


def spread(values: list) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "-"
    missing = f", {len(values) - len(done)} timed out" if len(done) < len(values) else ""
    return f"median {statistics.median(done):.2f} s, max {max(done):.2f} s{missing}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inflight", default="0,4",
                   help="max_inflight_batches values to compare (comma-separated)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--stop-seconds", type=float, default=20.0)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--count", type=int, default=40)
    args = p.parse_args(argv)
    print(f"a node death while a {args.stop_seconds:g} s stop runs on another node: "
          f"{args.nodes} nodes, web x{args.count}, {args.trials} trial(s) each; "
          f"load before {' '.join(f'{v:.1f}' for v in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs", flush=True)
    for n in (int(v) for v in args.inflight.split(",")):
        rows = [trial(n, args) for _ in range(args.trials)]
        print(f"\nmax_inflight_batches {n}: {rows[0]['lost']} lost instance(s) per death; "
              f"the death {spread([r['into_stop_s'] for r in rows])} into the stop")
        print(f"  death -> every lost slot re-planned: {spread([r['planned_s'] for r in rows])}")
        print(f"  death -> every lost slot running:    {spread([r['running_s'] for r in rows])}")
        print(f"  lost instances re-planned onto the node of the slow stop (they wait for it: "
              f"one batch per node at a time): {[r['onto_slow'] for r in rows]}")
    print(f"\nload after {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
