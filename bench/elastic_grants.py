"""Usage-driven grants (core/grants.py usage_grants) on simulated nodes: flapping and reaction.

Each node has N instances with declared ranges; each instance wants a level of CPU and memory
that holds steady with +-noise per sample (seeded), and uses min(want, grant) as a cgroup lets
it. The leader samples every --interval seconds (the scheduler's --usage-interval) for
--hours. Prints, per noise level: grant changes per hour once settled (the first 10 minutes
are the settling), the samples and seconds from an instance starting to press to its grant
rising, and the cost of one decision for a node. Figures only; nothing asserts.

CPU throttling (cpu.stat) is reported as the kernel would: an instance that wants more than
its quota is throttled in every period. `--starved` lists how much of a quota the CPUs
deliver (1: all of it; 0.84: the vm tier's tcg vCPUs), so usage reads that share of it.

    PYTHONPATH=scheduler python bench/elastic_grants.py [--nodes 50] [--per-node 8]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

from walle.core.grants import ElasticInstance, ElasticPolicy, Measured, grants_for, usage_grants

MIB = 1 << 20


def node(rng: random.Random, per_node: int):
    cpu_cap, mem_cap = 8.0, 16384 * MIB
    ranges = []
    for k in range(per_node):
        cpu_min = rng.choice([0.25, 0.5, 0.5, 1.0])
        mem_min = rng.choice([128, 256, 512]) * MIB
        ranges.append((f"j{k}-0", cpu_min, cpu_min * rng.choice([2, 4]), mem_min,
                       mem_min * rng.choice([2, 4])))
    grants = grants_for(cpu_cap, mem_cap, ranges)
    wants = {key: (rng.uniform(0, hi), rng.uniform(0, mmax)) for key, _, hi, _, mmax in ranges}
    return cpu_cap, mem_cap, [ElasticInstance(key, *r, grants[key]) for key, *r in ranges], wants


def simulate(rng, cpu_cap, mem_cap, instances, wants, samples, noise, policy, starved=1.0):
    changes_per_sample = []
    for _ in range(samples):
        fed = []
        for inst in instances:
            cpu, mem = wants[inst.key]
            jitter = 1 + rng.uniform(-noise, noise)
            quota = inst.grant.cpu_quota_percent / 100
            fed.append(replace(inst, measured=Measured(
                min(cpu * jitter, quota) * starved,
                int(min(mem * jitter, inst.grant.memory_high)),
                1.0 if cpu * jitter > quota else 0.0)))
        changes, streaks = usage_grants(cpu_cap, mem_cap, fed, policy)
        new = {c.key: c.new for c in changes}
        instances = [replace(i, grant=new.get(i.key, i.grant), streak=streaks[i.key])
                     for i in fed]
        changes_per_sample.append(len(changes))
    return changes_per_sample


def press_to_rise(policy, starved: float = 1.0) -> int:
    """Samples from an instance starting to press (wanting more than its grant: usage at
    `starved` of it, throttled in every period) to its grant rising."""
    inst = ElasticInstance("a-0", 0.5, 2.0, 64 * MIB, 64 * MIB,
                           grants_for(1.0, 1 << 40, [("a-0", 0.5, 2.0, 64 * MIB, 64 * MIB)])["a-0"])
    for n in range(1, 100):
        changes, streaks = usage_grants(4.0, 1 << 40, [replace(inst, measured=Measured(
            inst.grant.cpu_quota_percent / 100 * starved, None, 1.0))], policy)
        if changes:
            return n
        inst = replace(inst, streak=streaks["a-0"])
    return -1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--per-node", type=int, default=8)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--starved", default="1,0.84",
                        help="comma-separated shares of a quota the CPUs deliver")
    args = parser.parse_args()
    starved_levels = [float(x) for x in args.starved.split(",")]
    policy = ElasticPolicy()
    samples = int(args.hours * 3600 / args.interval)
    settle = int(600 / args.interval)
    print(f"policy {policy}")
    for starved in starved_levels:
        n = press_to_rise(policy, starved)
        print(f"press -> rise (CPUs at {starved:.0%} of the quota): {n} samples = "
              f"{n * args.interval:.0f} s at --usage-interval {args.interval:.0f} "
              f"(plus one grants.yml run)")
    for starved, noise in [(s, n) for s in starved_levels for n in (0.0, 0.1, 0.2, 0.3)]:
        rng = random.Random(args.seed)
        settled = total = 0
        started = time.perf_counter()
        for _ in range(args.nodes):
            cpu_cap, mem_cap, instances, wants = node(rng, args.per_node)
            per_sample = simulate(rng, cpu_cap, mem_cap, instances, wants, samples, noise,
                                  policy, starved)
            total += sum(per_sample)
            settled += sum(per_sample[settle:])
        spent = time.perf_counter() - started
        instances = args.nodes * args.per_node
        hours_settled = (samples - settle) * args.interval / 3600
        print(f"CPUs at {starved:.0%}, noise +-{noise:.0%}: {instances} instances, "
              f"{samples} samples each; "
              f"changes in the first 10 min {total - settled}, after: "
              f"{settled / instances / hours_settled:.2f} per instance per hour; "
              f"decision {spent / (args.nodes * samples) * 1e3:.2f} ms per node-sample")


if __name__ == "__main__":
    main()
