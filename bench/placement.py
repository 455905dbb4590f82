"""Placement benchmark: speed, memory and packing quality of walle.core (prints figures).

    .venv/bin/python bench/placement.py [--quick] [--seed N]

Synthetic pool (heterogeneous, documented here so the figures can be reproduced):
  node types, by share of the pool      cores  memory   gpus
    general (40%)                         16    64 GiB     0
    general-large (30%)                   32   128 GiB     0
    compute (15%)                         64   256 GiB     0
    memory-optimised (10%)                48   384 GiB     0
    gpu (5%)                              32   256 GiB     4
  3 zones, racks of 40 nodes; 5% of nodes hold each of 20 datasets.
Workload mix (instances drawn until the target count is reached):
  services (~70% of instances): count log-uniform 1..200, cpu min 0.1/0.25/0.5/1/2 cores
    (weights 30/30/20/15/5), max = min x 1/2/4, memory min 128 MiB..4 GiB (log-uniform over
    6 sizes), max = 2 x min, priority 60..80, a third spread over zones, 10% want a dataset.
  batch (~29.5%): count log-uniform 10..1000, cpu 2/4/8 cores, memory 4..32 GiB, priority
    20..40, bin-packed.
  gpu (~0.5%): count 1..8, 1/2/4 GPUs (weights 2/1/1), 8 cores, 32..64 GiB, priority 70.
Figures: placements/s for one reconcile of everything (index build, placement, grants and
the plan included), peak RSS (getrusage), nodes used against the lower bound (for each
resource the fewest largest nodes whose capacity covers the demand; the bound is the largest
of those), the exact optimum from OR-Tools CP-SAT on small instances, the reconcile time after
one node dies, and the shared-pool experiment (three workloads on one pool against three
statically partitioned pools).
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import resource
import time
from collections.abc import Mapping

from walle.core import Capacity, Node, PlacementConfig, apply_plan, reconcile
from walle.jobspec.model import JobSpec, Range, Resources, Runtime

GiB, MiB = 1 << 30, 1 << 20
NODE_TYPES = (  # share, cores, memory, gpus
    (0.40, 16, 64 * GiB, 0), (0.30, 32, 128 * GiB, 0), (0.15, 64, 256 * GiB, 0),
    (0.10, 48, 384 * GiB, 0), (0.05, 32, 256 * GiB, 4))
DATASETS = tuple(f"ds{k}" for k in range(20))


def make_nodes(count: int, rng: random.Random, types=NODE_TYPES) -> list[Node]:
    shares = [t[0] for t in types]
    nodes = []
    for k in range(count):
        _, cpu, mem, gpus = rng.choices(types, weights=shares)[0]
        held = frozenset(d for d in DATASETS if rng.random() < 0.05)
        nodes.append(Node(f"node{k:05d}", Capacity(cpu, mem, 2000 * GiB, gpus),
                          zone=f"z{k % 3}", rack=f"r{k // 40}", datasets=held))
    return nodes


def job(name: str, kind: str, count: int, cpu: tuple[float, float], mem: tuple[int, int],
        priority: int, **extra) -> JobSpec:
    return JobSpec(name=name, kind=kind, count=count, priority=priority,
                   resources=Resources(cpu=Range(*cpu), memory=Range(*mem),
                                       gpus=extra.pop("gpus", 0)),
                   runtime=Runtime(kind="exec", command="/usr/bin/true"), **extra)


def service(rng: random.Random, name: str) -> JobSpec:
    cpu = rng.choices((0.1, 0.25, 0.5, 1, 2), weights=(30, 30, 20, 15, 5))[0]
    mem = rng.choice((128, 256, 512, 1024, 2048, 4096)) * MiB
    extra = {}
    if rng.random() < 1 / 3:
        extra["strategy"] = "spread"
    if rng.random() < 0.1:
        extra["data"] = (rng.choice(DATASETS),)
    count = int(math.exp(rng.uniform(0, math.log(200))))
    return job(name, "service", count, (cpu, cpu * rng.choice((1, 2, 4))), (mem, 2 * mem),
               rng.randint(60, 80), **extra)


def batch(rng: random.Random, name: str) -> JobSpec:
    count = int(math.exp(rng.uniform(math.log(10), math.log(1000))))
    cpu = rng.choice((2, 4, 8))
    mem = rng.choice((4, 8, 16, 32)) * GiB
    return job(name, "batch", count, (cpu, cpu), (mem, mem), rng.randint(20, 40),
               strategy="binpack")


def gpu(rng: random.Random, name: str) -> JobSpec:
    mem = rng.choice((32, 48, 64)) * GiB
    return job(name, "batch", rng.randint(1, 8), (8, 8), (mem, mem), 70,
               gpus=rng.choice((1, 1, 2, 4)))


def make_workload(instances: int, rng: random.Random, *, spread_share: bool = True,
                  mix=((service, 0.70), (batch, 0.295), (gpu, 0.005))) -> dict[str, JobSpec]:
    """Jobs drawn per kind until each kind has its share of `instances`."""
    jobs: dict[str, JobSpec] = {}
    for make, share in mix:
        want, have = int(instances * share), 0
        while have < want:
            spec = make(rng, f"{make.__name__}-{len(jobs)}")
            if have + spec.count > want:
                spec = _with_count(spec, want - have)
            if not spread_share and spec.strategy == "spread":
                spec = _with(spec, strategy=None)
            jobs[spec.name] = spec
            have += spec.count
    return jobs


def _with_count(spec: JobSpec, count: int) -> JobSpec:
    return _with(spec, count=count)


def _with(spec: JobSpec, **changes) -> JobSpec:
    from dataclasses import replace
    return replace(spec, **changes)


def lower_bound(nodes: list[Node], jobs: Mapping[str, JobSpec]) -> int:
    """Fewest nodes whose capacity could cover the demand, taken per resource (largest
    nodes first), the maximum over resources. GPUs only count GPU nodes."""
    demand = {
        "cpu": sum(j.resources.cpu.min * j.count for j in jobs.values()),
        "memory": sum(j.resources.memory.min * j.count for j in jobs.values()),
        "gpus": sum(j.resources.gpus * j.count for j in jobs.values()),
    }
    bound = 0
    for what, need in demand.items():
        caps = sorted((getattr(n.capacity, what) for n in nodes), reverse=True)
        total, k = 0.0, 0
        while total < need and k < len(caps):
            total += caps[k]
            k += 1
        bound = max(bound, k)
    return bound


def joint_lower_bound(nodes: list[Node], jobs: Mapping[str, JobSpec]) -> int:
    """A tighter valid bound: the fewest nodes (counted per node type, within what the pool
    has) whose cpu, memory and GPUs together cover the demand, GPU jobs' cpu and memory on GPU
    nodes; instances may be split (fractional), so no packing can beat it."""
    from ortools.sat.python import cp_model

    types: dict[tuple, int] = {}
    for n in nodes:
        shape = (millis(n.capacity.cpu), n.capacity.memory // MiB, n.capacity.gpus)
        types[shape] = types.get(shape, 0) + 1
    def demand(specs, what):
        return sum(what(j) * j.count for j in specs)
    gpu_jobs = [j for j in jobs.values() if j.resources.gpus]
    cpu = lambda j: millis(j.resources.cpu.min)  # noqa: E731
    mem = lambda j: j.resources.memory.min // MiB  # noqa: E731
    model = cp_model.CpModel()
    count = {t: model.NewIntVar(0, n, str(t)) for t, n in types.items()}
    for k, what in ((0, cpu), (1, mem)):
        model.Add(sum(c * t[k] for t, c in count.items()) >= demand(jobs.values(), what))
        model.Add(sum(c * t[k] for t, c in count.items() if t[2])
                  >= demand(gpu_jobs, what))
    model.Add(sum(c * t[2] for t, c in count.items())
              >= demand(jobs.values(), lambda j: j.resources.gpus))
    model.Minimize(sum(count.values()))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = 10.0
    solver.parameters.num_workers = 1
    status = solver.Solve(model)
    if status == cp_model.OPTIMAL:
        return int(solver.ObjectiveValue())
    return int(solver.BestObjectiveBound())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def used_nodes(allocs) -> int:
    return len({a.node for a in allocs})


def bench_scale(nodes_count: int, instances: int, seed: int, strategy: str) -> dict:
    rng = random.Random(seed)
    nodes = make_nodes(nodes_count, rng)
    jobs = make_workload(instances, rng, spread_share=strategy != "binpack")
    config = PlacementConfig(default_strategy=strategy)
    gc.collect()
    start, cpu_start = time.perf_counter(), time.process_time()
    plan = reconcile(jobs, [], nodes, seed=seed, now=0.0, config=config)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    placed = len(plan.places)
    allocs = apply_plan([], plan)
    result = {
        "nodes": nodes_count, "jobs": len(jobs), "instances": sum(j.count for j in jobs.values()),
        "placed": placed, "failed": sum(len(f.slots) for f in plan.failures),
        "seconds": elapsed, "cpu": cpu, "rate": placed / cpu, "rss_mb": peak_rss_mb(),
        "used": used_nodes(allocs), "bound": lower_bound(nodes, jobs),
        "joint": joint_lower_bound(nodes, jobs),
    }
    if strategy == "binpack":
        result.update(bench_node_death(jobs, allocs, nodes, seed, config))
    return result


def bench_node_death(jobs, allocs, nodes, seed, config) -> dict:
    """One busy node goes down: time to plan the migrations of what ran there."""
    counts: dict[str, int] = {}
    for a in allocs:
        counts[a.node] = counts.get(a.node, 0) + 1
    victim = max(sorted(counts), key=counts.get)
    running = tuple(_running(a) for a in allocs)
    after = [n if n.name != victim else Node(n.name, n.capacity, n.zone, n.rack, n.labels,
                                             n.datasets, "down") for n in nodes]
    gc.collect()
    start, cpu_start = time.perf_counter(), time.process_time()
    plan = reconcile(jobs, running, after, seed=seed + 1, now=1.0, config=config)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"death_seconds": elapsed, "death_cpu": cpu, "death_migrates": len(plan.migrates),
            "death_failed": sum(len(f.slots) for f in plan.failures)}


def _running(a):
    from dataclasses import replace
    return replace(a, state="running")


# -- exact optimum on small instances ---------------------------------------------------------
def bench_solver(seed: int, instances: int = 6, limit_s: float = 10.0, nodes_count: int = 24,
                 jobs_count: tuple[int, int] = (10, 16)) -> list[dict]:
    """Small pools (`nodes_count` nodes of the four non-GPU types, 40-130 instances) where
    CP-SAT can prove the fewest nodes; ours is one reconcile with binpack."""
    from ortools.sat.python import cp_model

    out = []
    for k in range(instances):
        rng = random.Random(seed * 100 + k)
        nodes = make_nodes(nodes_count, rng, types=NODE_TYPES[:4])
        jobs = {}
        for n in range(rng.randint(*jobs_count)):
            # the solver sees resources only, so jobs carry no spread preference: services'
            # zone/anti-affinity spreading is a deliberate cost the optimum does not pay
            spec = (service if n % 2 else batch)(rng, f"j{n}")
            jobs[spec.name] = _with(spec, count=min(spec.count, rng.randint(2, 12)),
                                    strategy="binpack", data=(), kind="batch")
        plan = reconcile(jobs, [], nodes, seed=seed, now=0.0)
        if plan.failures:
            continue
        ours = used_nodes(p.alloc for p in plan.places)
        items = [(millis(j.resources.cpu.min), j.resources.memory.min // MiB)
                 for j in jobs.values() for _ in range(j.count)]
        model = cp_model.CpModel()
        x = {(i, b): model.NewBoolVar(f"x{i}_{b}") for i in range(len(items))
             for b in range(len(nodes))}
        y = [model.NewBoolVar(f"y{b}") for b in range(len(nodes))]
        for i in range(len(items)):
            model.AddExactlyOne(x[i, b] for b in range(len(nodes)))
        for b, node in enumerate(nodes):
            model.Add(sum(items[i][0] * x[i, b] for i in range(len(items)))
                      <= millis(node.capacity.cpu) * y[b])
            model.Add(sum(items[i][1] * x[i, b] for i in range(len(items)))
                      <= node.capacity.memory // MiB * y[b])
        model.Minimize(sum(y))
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = limit_s
        solver.parameters.num_workers = 1
        status = solver.Solve(model)
        out.append({"items": len(items), "ours": ours, "solver": int(solver.ObjectiveValue()),
                    "optimal": status == cp_model.OPTIMAL,
                    "bound": lower_bound(nodes, jobs)})
    return out


def millis(cores: float) -> int:
    return math.ceil(round(cores * 1000, 6))


# -- shared pool vs partitioned pools ---------------------------------------------------------
STANDARD = ((1.0, 32, 128 * GiB, 0),)
GPU_NODE = ((1.0, 32, 256 * GiB, 4),)


def shared_pool_workloads(rng: random.Random) -> dict[str, dict[str, JobSpec]]:
    """web: cpu-heavy services; analytics: memory-heavy batch; ml: GPU training plus
    cpu-heavy preprocessing."""
    web, analytics, ml = {}, {}, {}
    for k in range(60):
        cpu = rng.choice((0.5, 1, 2))
        web[f"web-{k}"] = job(f"web-{k}", "service", rng.randint(5, 40), (cpu, 2 * cpu),
                              (int(cpu * 1 * GiB), int(cpu * 2 * GiB)), 70)
    for k in range(30):
        mem = rng.choice((16, 32, 48)) * GiB
        analytics[f"etl-{k}"] = job(f"etl-{k}", "batch", rng.randint(5, 30), (1, 1),
                                    (mem, mem), 30)
    for k in range(10):
        ml[f"train-{k}"] = job(f"train-{k}", "batch", rng.randint(1, 6), (6, 6),
                               (48 * GiB, 48 * GiB), 60, gpus=rng.randint(1, 2))
        ml[f"prep-{k}"] = job(f"prep-{k}", "batch", rng.randint(5, 20), (4, 4),
                              (4 * GiB, 4 * GiB), 50)
    return {"web": web, "analytics": analytics, "ml": ml}


def bench_shared_pool(seed: int) -> dict:
    """Jobs arrive one by one in a random interleaving (one reconcile per arrival, as the
    scheduler sees them); each partition sees its own jobs in the same order. Machines
    needed = nodes holding anything at the end."""
    rng = random.Random(seed)
    workloads = shared_pool_workloads(rng)
    pool = make_nodes(1200, random.Random(seed), STANDARD) + [
        Node(f"gpu{k:04d}", Capacity(32, 256 * GiB, 2000 * GiB, 4), zone=f"z{k % 3}")
        for k in range(200)]
    arrivals = [spec for jobs in workloads.values() for spec in jobs.values()]
    rng.shuffle(arrivals)
    needed = {}
    for name, jobs in workloads.items():
        needed[name] = arrive([s for s in arrivals if s.name in jobs], pool, seed)
    everything = {k: v for jobs in workloads.values() for k, v in jobs.items()}
    return {"partitioned": needed, "shared": arrive(arrivals, pool, seed),
            "shared_bound": lower_bound(pool, everything)}


def arrive(specs: list[JobSpec], pool: list[Node], seed: int) -> tuple[int, int]:
    """(nodes used, instances not placed) after the specs arrive one at a time."""
    desired: dict[str, JobSpec] = {}
    state: tuple = ()
    plan = None
    for t, spec in enumerate(specs):
        desired[spec.name] = spec
        plan = reconcile(desired, state, pool, seed=seed + t, now=float(t))
        state = tuple(_running(a) for a in apply_plan(state, plan))
    failed = sum(len(f.slots) for f in plan.failures) if plan else 0
    return used_nodes(state), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 nodes only, no solver")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sizes = [(1000, 10_000)] if args.quick else [(1000, 10_000), (10_000, 100_000)]
    for nodes, instances in sizes:
        for strategy in ("binpack", "spread"):
            r = bench_scale(nodes, instances, args.seed, strategy)
            print(f"{strategy:8s} {r['nodes']:6d} nodes {r['jobs']:5d} jobs "
                  f"{r['placed']:7d}/{r['instances']} placed ({r['failed']} failed) in "
                  f"{r['cpu']:.2f}s cpu ({r['seconds']:.2f}s wall) = {r['rate']:,.0f}/s; "
                  f"peak RSS {r['rss_mb']:.0f} MB; "
                  f"nodes used {r['used']} vs lower bound {r['bound']} "
                  f"({r['used'] / r['bound']:.3f}x), joint bound {r['joint']} "
                  f"({r['used'] / r['joint']:.3f}x)")
            if "death_seconds" in r:
                print(f"         one node down: reconcile {r['death_cpu']:.3f}s cpu "
                      f"({r['death_seconds']:.3f}s wall), "
                      f"{r['death_migrates']} migrations, {r['death_failed']} failed")
    if not args.quick:
        for s in bench_solver(args.seed):
            print(f"solver   {s['items']:3d} instances: ours {s['ours']} nodes, CP-SAT "
                  f"{s['solver']} ({'optimal' if s['optimal'] else 'best found'}), "
                  f"lower bound {s['bound']}")
    r = bench_shared_pool(args.seed)
    parts = r["partitioned"]
    total = sum(n for n, _ in parts.values())
    print("shared   (jobs arrive one at a time, interleaved)")
    print("shared   partitioned pools: " + ", ".join(
        f"{k} {n} nodes ({f} failed)" for k, (n, f) in parts.items()) + f"; total {total}")
    print(f"shared   one shared pool: {r['shared'][0]} nodes ({r['shared'][1]} failed); "
          f"lower bound {r['shared_bound']}; saving {1 - r['shared'][0] / total:.1%}")


if __name__ == "__main__":
    main()
