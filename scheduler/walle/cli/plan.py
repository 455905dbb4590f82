"""`walle plan [JOB|FILE] [--explain] [--json]`: the leader's decision as a dry run.

Runs the scheduler's own decision (walle.service.decide, through walle.service.dryrun) on the
live snapshot with the defaults the leader published, and says for every slot what the leader
will do and why, and what one more instance would get. Nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from walle.adapters.consul.state import job_key
from walle.cli.common import add_consul_args, cluster_command, connect, print_json
from walle.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from walle.cli.output import print_table
from walle.core import format_nodes
from walle.core.shed import describe_pressure, pressure_to_json
from walle.jobspec import SpecError, load_spec_file
from walle.service.cluster import load_snapshot
from walle.service.dryrun import (
    DryRun,
    JobPlan,
    dry_run,
    published_defaults,
    published_in_flight,
    published_presence,
    published_pressure,
)

EPILOG = """\
What the leader does with each slot: keep, place, move, replace, update, regrant, stop, evict,
refused (no feasible node: the reasons, per number of nodes), waiting (a failed slot's back-
off), held (its node left the catalog or failed, within node_leave_grace or node_down_grace),
hands-off (its record cannot be read), done (a batch instance that finished), in-flight (a
playbook of the leader acts on it now, as the leader last published: walle/config/in-flight;
the leader decides on it again once the playbook's outcome is in). The plan is the
leader's own decision on the stored records, with the strategy and seed the leader published in
Consul (walle/config/placement; the built-in defaults, said so, when no leader has).

exit codes: 0 every slot has its place; 1 some slot will have none (refused, waiting, or
hands-off without an instance) or the cluster answered with an error; 2 bad input (neither
a job nor a valid spec file); 3 Consul unreachable."""


def register(subparsers) -> None:
    plan = subparsers.add_parser(
        "plan", help="what the leader will do with each slot, and why (dry run)",
        description="What the leader will do with each slot, and why: its own decision on the "
                    "live state, as a dry run (nothing is written).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    plan.add_argument("job", nargs="?",
                      help="a job in the cluster, or a spec file (decided as if submitted); "
                           "default: every job")
    plan.add_argument("--explain", action="store_true",
                      help="also score every node for one more instance")
    add_consul_args(plan)
    plan.set_defaults(func=cmd_plan)


@cluster_command
def cmd_plan(args) -> int:
    api, store = connect(args)
    snap = load_snapshot(api, store)
    defaults, source = published_defaults(store)
    what_if, jobs = None, None
    if args.job is not None and args.job in snap.frozen_jobs:
        reasons = [why for key, why in snap.unreadable if key == job_key(args.job)]
        print(f"walle plan: the record of job {args.job!r} cannot be read, so the leader "
              f"leaves it alone: {'; '.join(reasons)}", file=sys.stderr)
        return EXIT_FAILED
    if args.job is not None and args.job not in snap.jobs:
        try:
            what_if = load_spec_file(args.job)
        except SpecError as err:
            print(f"walle plan: {args.job!r} is neither a job in the cluster nor a valid "
                  f"spec file:\n{err}", file=sys.stderr)
            return EXIT_USAGE
    if args.job is not None:
        jobs = [what_if.name if what_if else args.job]
    now = time.time()
    run = dry_run(snap, defaults, now, jobs=jobs, what_if=what_if,
                  memory=published_presence(store), pressure=published_pressure(store),
                  in_flight=published_in_flight(store))
    if args.json:
        print_json(_as_json(run, defaults, source, snap.unreadable))
    else:
        _print(run, defaults, source, args.explain, now)
    return EXIT_FAILED if any(job.unplaced for job in run.jobs) else EXIT_OK


def _as_json(run: DryRun, defaults, source: str, unreadable) -> dict:
    return {"defaults": {**defaults.to_json(), "source": source},
            "away": sorted(run.away),
            "jobs": [{"job": j.job, "count": j.count, "unplaced": list(j.unplaced),
                      "slots": [dataclasses.asdict(d) for d in j.slots],
                      "new_instance": dataclasses.asdict(j.new_instance),
                      "nodes": dataclasses.asdict(j.nodes)} for j in run.jobs],
            "unreadable": [{"key": k, "reason": r} for k, r in unreadable],
            "pressure": None if run.pressure is None else pressure_to_json(run.pressure)}


def _print(run: DryRun, defaults, source: str, explain: bool, now: float) -> None:
    print(f"defaults: strategy {defaults.strategy}, seed {defaults.seed} ({source})")
    if explain and run.pressure is not None:
        print("\n".join(describe_pressure(run.pressure, now)))
    if not run.jobs:
        print("no jobs")
    for job in run.jobs:
        print()
        _print_job(job, explain)


def _print_job(job: JobPlan, explain: bool) -> None:
    print(f"job {job.job} ({job.count} instance{'s' if job.count != 1 else ''}, "
          f"{job.nodes.strategy}):")
    rows = [{"instance": d.instance, "now": d.now, "decision": d.action, "node": d.node,
             "why": d.reason or None} for d in job.slots]
    print_table(rows, ["instance", "now", "decision", "node", "why"])
    new = job.new_instance
    if new.node is not None:
        print(f"one more instance ({new.instance}) would go to {new.node}")
    else:
        print(f"one more instance ({new.instance}) would be {new.action}: {new.reason}")
    if explain:
        print(f"\nnode by node, for one more instance after this plan (every node scored; "
              f"the leader scores a sample):\n{format_nodes(job.nodes)}")
