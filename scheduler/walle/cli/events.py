"""`walle events [JOB] [--follow]`: what the leader did to each job's slots, and why.

Reads the per-job histories the leader keeps (walle/events/<job>, service/history.py), oldest
first, in the spirit of `kubectl get events`. `--follow` prints the events so far, then each
new one as it arrives (blocking queries of at most FOLLOW_WAIT seconds each), until Ctrl-C
or `--for` seconds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping

from walle.adapters.consul import Watch
from walle.cli.common import add_consul_args, cluster_command, connect, print_json
from walle.cli.main import EXIT_FAILED, EXIT_OK
from walle.cli.output import print_table, printable
from walle.service.history import JobHistory, from_data
from walle.service.records import clock_time

COLUMNS = ["time", "job", "slot", "node", "event", "message"]
FOLLOW_WAIT = 30.0
FOLLOW_WIDTHS = (12, 16, 4, 10, 13, 0)


def register(subparsers) -> None:
    events = subparsers.add_parser("events", help="what the leader did to a job's slots, "
                                                  "and why (placed, lost, cannot place, ...)")
    events.add_argument("job", nargs="?", help="one job (default: every job)")
    events.add_argument("--follow", "-f", action="store_true",
                        help="keep printing new events until Ctrl-C")
    events.add_argument("--for", dest="follow_for", type=float, default=0, metavar="SECONDS",
                        help="with --follow: stop after this long (default 0: until Ctrl-C)")
    add_consul_args(events)
    events.set_defaults(func=cmd_events)


@cluster_command
def cmd_events(args) -> int:
    _, store = connect(args)
    _, stored = store.events(args.job)
    histories = {job: from_data(body) for job, (body, _) in stored.items()}
    if args.job and not histories and store.job(args.job) is None:
        print(f"walle events: no job {args.job!r} and no events of it", file=sys.stderr)
        return EXIT_FAILED
    rows = event_rows(histories)
    if not args.follow:
        if args.json:
            print_json(rows)
        elif rows:
            print_table(rows, COLUMNS)
        else:
            print("no events")
        return EXIT_OK
    try:
        return _follow(args, store, rows)
    except KeyboardInterrupt:  # the way to end --follow: not an error
        return EXIT_OK


def event_rows(histories: Mapping[str, JobHistory]) -> list[dict]:
    """One row per event of every history, oldest first."""
    rows = [{"time": clock_time(e.time), "at": e.time, "job": printable(job), "slot": e.slot,
             "node": printable(e.node) or None, "event": printable(e.event),
             "message": printable(e.message), "seq": e.seq}
            for job, history in histories.items() for e in history.events]
    return sorted(rows, key=lambda r: (r["at"], r["job"], r["seq"]))


def _follow(args, store, rows: list[dict]) -> int:
    """Print `rows`, then new events as they come: JSON lines with --json, else table lines
    (the header once)."""
    deadline = time.monotonic() + args.follow_for if args.follow_for > 0 else None
    seen: dict[str, int] = {}
    _print_rows(args, rows, header=True)
    for r in rows:
        seen[r["job"]] = max(seen.get(r["job"], 0), r["seq"])
    watch = Watch(lambda index, wait: store.events(args.job, index, wait), wait=FOLLOW_WAIT,
                  name="watch events")
    while deadline is None or time.monotonic() < deadline:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        change = watch.next_change(timeout=remaining)
        if change is None:
            break
        histories = {job: from_data(body) for job, (body, _) in change[1].items()}
        for job, history in histories.items():
            if history.next_seq - 1 < seen.get(job, 0):  # deleted and started again
                seen[job] = 0
        new = [r for r in event_rows(histories) if r["seq"] > seen.get(r["job"], 0)]
        for r in new:
            seen[r["job"]] = r["seq"]
        _print_rows(args, new, header=False)
    return EXIT_OK


def _print_rows(args, rows: list[dict], header: bool) -> None:
    if args.json:
        for r in rows:
            print(json.dumps(r, sort_keys=True), flush=True)
        return
    if header:
        print(_line({c: c.upper() for c in COLUMNS}), flush=True)
    for r in rows:
        print(_line(r), flush=True)


def _line(row: Mapping) -> str:
    """Fixed widths, so rows printed later line up with the first ones."""
    cells = [str(row["time"]), str(row["job"]), "-" if row["slot"] is None else str(row["slot"]),
             str(row["node"] or "-"), str(row["event"]), str(row["message"])]
    return "  ".join(c.ljust(w) for c, w in zip(cells, FOLLOW_WIDTHS, strict=True)).rstrip()


