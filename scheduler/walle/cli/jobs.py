"""Job commands: `walle run`, `stop`, `scale`, `status` (and `plan`, in walle.cli.plan)."""

from __future__ import annotations

import sys
import time

from walle.cli import plan
from walle.cli.common import (
    ActionError,
    add_consul_args,
    cluster_command,
    connect,
    print_json,
    progress,
)
from walle.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from walle.cli.output import print_table, printable
from walle.core import Allocation
from walle.jobspec import SpecError, load_spec_file
from walle.naming import instance_id, job_allocs_prefix, job_key
from walle.service import jobs
from walle.service.adopt import unclaimed_instances
from walle.service.cluster import Snapshot, load_snapshot
from walle.service.cron_runs import CronRun, job_runs
from walle.service.history import JobHistory, from_data


def register(subparsers) -> None:
    run = subparsers.add_parser("run", help="submit (or update) a job from a spec file")
    run.add_argument("file")
    run.add_argument("--wait", type=float, metavar="SECONDS", default=0,
                     help="wait until every instance passes its checks (0: do not wait)")
    add_consul_args(run)
    run.set_defaults(func=cmd_run)

    stop = subparsers.add_parser("stop", help="stop a job: its instances stop gracefully")
    stop.add_argument("job")
    stop.add_argument("--wait", type=float, metavar="SECONDS", default=0)
    add_consul_args(stop)
    stop.set_defaults(func=cmd_stop)

    scale = subparsers.add_parser("scale", help="change a job's instance count")
    scale.add_argument("job")
    scale.add_argument("count", type=int)
    scale.add_argument("--wait", type=float, metavar="SECONDS", default=0)
    add_consul_args(scale)
    scale.set_defaults(func=cmd_scale)

    status = subparsers.add_parser("status", help="jobs, or one job's instances")
    status.add_argument("job", nargs="?")
    add_consul_args(status)
    status.set_defaults(func=cmd_status)

    plan.register(subparsers)  # walle.cli.plan: the leader's decision as a dry run


@cluster_command
def cmd_run(args) -> int:
    try:
        spec = load_spec_file(args.file)
    except SpecError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE
    _, store = connect(args)
    verb = jobs.submit(store, spec)
    if verb is None:
        print(f"walle run: {spec.name} kept changing under us; try again", file=sys.stderr)
        return EXIT_FAILED
    if verb == "unchanged":
        _say(args, {"job": spec.name, "version": spec.digest(), "changed": False},
             f"{spec.name}: already at version {spec.digest()}")
    else:
        _say(args, {"job": spec.name, "version": spec.digest(), "changed": True},
             f"{spec.name}: {verb}, version {spec.digest()}")
    return _wait(args, spec.name, spec.count)


@cluster_command
def cmd_stop(args) -> int:
    api, store = connect(args)
    try:
        unclaimed = jobs.stop(api, store, args.job)
    except ActionError as err:
        print(f"walle stop: {err}", file=sys.stderr)
        return EXIT_FAILED
    if unclaimed:
        _say(args, {"job": args.job, "stopped": True, "unclaimed": list(map(str, unclaimed))},
             f"{args.job}: not in Consul; stopping its {len(unclaimed)} unclaimed "
             "instance(s) at the leader's next pass")
        return EXIT_OK
    _say(args, {"job": args.job, "stopped": True}, f"{args.job}: stopping")
    return _wait(args, args.job, 0)


@cluster_command
def cmd_scale(args) -> int:
    _, store = connect(args)
    try:
        jobs.scale(store, args.job, args.count)
    except ActionError as err:
        print(f"walle scale: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, jobs.BadCount) else EXIT_FAILED
    _say(args, {"job": args.job, "count": args.count}, f"{args.job}: scaled to {args.count}")
    return _wait(args, args.job, args.count)


@cluster_command
def cmd_status(args) -> int:
    api, store = connect(args)
    snap = load_snapshot(api, store)
    if args.job:
        _, stored = store.events(args.job)
        history = from_data(stored[args.job][0]) if args.job in stored else JobHistory()
        rows = instance_rows(snap, args.job, history)
        unreadable = unreadable_rows(snap, args.job)
        if args.job not in snap.jobs and not rows and not unreadable:
            print(f"walle status: no job {args.job!r}", file=sys.stderr)
            return EXIT_FAILED
        runs = job_runs(store.cron_runs(args.job)) if _is_cron(snap, args.job) else []
        if args.json:
            print_json(_with_runs(rows, runs) if _is_cron(snap, args.job) else rows)
        else:
            print_table(rows, ["instance", "node", "ports", "state", "health", "cpu_quota",
                               "cpu_weight", "memory_max", "version", "previous", "reason"])
            _print_runs(runs)
            _print_unreadable(unreadable)
        return EXIT_OK
    rows = job_rows(snap)
    unreadable = unreadable_rows(snap)
    if args.json:
        print_json({"jobs": rows, "unreadable": unreadable})
    elif not rows:
        print("no jobs (`walle run FILE` submits one)")
    else:
        print_table(rows, ["job", "kind", "count", "running", "pending", "lost", "failed",
                           "version"])
        _print_unreadable(unreadable)
    _warn_unclaimed(snap)
    return EXIT_OK


def _is_cron(snap: Snapshot, job: str) -> bool:
    spec = snap.jobs.get(job)
    return spec is not None and spec.kind == "cron"


def _with_runs(rows: list[dict], runs: list[CronRun]) -> list[dict]:
    """--json: each instance row of a cron job carries its slot's last runs, oldest first."""
    return [{**row, "runs": [r.to_row() for r in runs if r.slot == row["slot"]]}
            for row in rows]


def _print_runs(runs: list[CronRun]) -> None:
    """The last runs as the nodes recorded them (node-written text is shown escaped)."""
    if not runs:
        return
    print(f"\nlast runs ({len(runs)}):")
    side_by_side = any(r.run for r in runs)  # concurrency allow: which run each attempt is
    print_table([{"slot": r.slot, "run": printable(r.run) or "-", "node": printable(r.node),
                  "start": _clock(r.start), "end": _clock(r.end), "attempt": r.attempt,
                  "result": printable(r.result),
                  "exit": printable(f"{r.exit_code} {r.exit_status}".strip()),
                  "retried": "yes" if r.retry else "no"} for r in runs],
                ["slot"] + (["run"] if side_by_side else []) +
                ["node", "start", "end", "attempt", "result", "exit", "retried"])


def _clock(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) if at is not None else "-"


def _print_unreadable(rows: list[dict]) -> None:
    if rows:
        print(f"\nunreadable records ({len(rows)}): skipped by the scheduler, which leaves what "
              f"they name alone; fix or delete them")
        print_table(rows, ["key", "reason"])


def _warn_unclaimed(snap: Snapshot) -> None:
    """Instances running for jobs that are not in Consul (state wiped or restored from an old
    backup): the leader keeps them; say so, on stderr so JSON output stays a table."""
    unclaimed = unclaimed_instances(snap)
    if unclaimed:
        print(f"unclaimed (running, no job in Consul): {', '.join(map(str, unclaimed))}\n"
              "  `walle run` the job to adopt them, or `walle stop JOB` to stop them",
              file=sys.stderr)


# ----- tables -------------------------------------------------------------------------------
def job_rows(snap: Snapshot) -> list[dict]:
    rows = []
    for name, spec in sorted(snap.jobs.items()):
        states = [r.state for r in snap.records.values() if r.alloc.job == name]
        rows.append({"job": name, "kind": spec.kind, "count": spec.count,
                     "running": states.count("running"), "pending": states.count("pending"),
                     "lost": states.count("lost"), "failed": states.count("failed"),
                     "version": spec.digest()})
    return rows


def unreadable_rows(snap: Snapshot, job: str | None = None) -> list[dict]:
    """Records the snapshot skipped (all, or those of one job), one line each: keys and
    reasons come from KV, so control characters are shown escaped, never sent to the
    terminal."""
    rows = []
    for key, reason in snap.unreadable:
        if job is None or key == job_key(job) or key.startswith(job_allocs_prefix(job)):
            rows.append({"key": printable(key), "reason": printable(reason)})
    return rows


def instance_rows(snap: Snapshot, job: str, history: JobHistory | None = None) -> list[dict]:
    """One row per slot: its record (state as the operator sees it, with why), or, for a slot
    the leader cannot place and that has no record, what the job's history says."""
    history = history or JobHistory()
    rows = [{"instance": instance_id(job, slot), "slot": slot, "node": None, "state": u.state,
             "health": "-", "reason": printable(u.why) or None}
            for slot, u in history.unplaced.items()
            if instance_id(job, slot) not in snap.records]
    for key, r in sorted(snap.records.items(), key=lambda kv: kv[1].alloc.slot):
        a = r.alloc
        if a.job != job:
            continue
        g = a.grant
        rows.append({
            "instance": key, "slot": a.slot, "node": a.node, "ports": ports_text(a),
            "state": r.state, "health": snap.instance_status(a.node, key) or "-",
            "cpu_quota": f"{g.cpu_quota_percent}%" if g else None,
            "cpu_weight": g.cpu_weight if g else None,
            "memory_max": _size(g.memory_max) if g else None,
            "version": a.spec_digest, "previous": r.previous.node if r.previous else None,
            "reason": printable(r.why) or None,
        })
    return sorted(rows, key=lambda row: row["slot"])


def ports_text(a: Allocation) -> str | None:
    """The ports an instance holds on its node: its dynamic ones by label, then static ones
    ("http=20417 9000")."""
    held = [f"{label}={port}" for label, port in a.dynamic_ports] + [str(p) for p in a.ports]
    return " ".join(held) or None


def _size(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _say(args, data: dict, text: str) -> None:
    if args.json:
        print_json(data)
    else:
        print(text)


def _wait(args, job: str, count: int) -> int:
    """Wait (bounded) until `count` instances of `job` run and pass, showing progress."""
    if not args.wait:
        return EXIT_OK
    api, store = connect(args)
    deadline = time.monotonic() + args.wait
    last = None
    while time.monotonic() < deadline:
        snap = load_snapshot(api, store)
        records = [r for r in snap.records.values() if r.alloc.job == job]
        running = [r for r in records if r.alloc.state == "running" and r.previous is None]
        line = f"{job}: {len(running)}/{count} running"
        if line != last:
            progress(line)
            last = line
        if len(running) == count and len(records) == count:
            return EXIT_OK
        time.sleep(0.2)
    progress(f"{job}: not converged within {args.wait:.0f}s")
    return EXIT_FAILED

