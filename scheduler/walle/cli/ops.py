"""Pool-wide operations: `walle exec -- CMD` on every node, `walle logs JOB`."""

from __future__ import annotations

import os
import sys

from walle.adapters.runner import run_command
from walle.cli.common import add_consul_args, cluster_command, connect, print_json
from walle.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_json_arg
from walle.naming import service_unit, unit_stem
from walle.service.cluster import load_snapshot

# Consul's live nodes (plugins/inventory/walle_consul.py), as the scheduler role and the lab
# write it; never a static list of machines
DEFAULT_INVENTORY = os.environ.get("WALLE_INVENTORY") or next(
    (path for path in ("/etc/walle/inventory/walle_consul.yml",
                       "/var/lib/walle/lab/default/pool/walle_consul.yml")
     if os.path.exists(path)), "/etc/walle/inventory/walle_consul.yml")


def register(subparsers) -> None:
    run = subparsers.add_parser("exec", help="run a command on every node (or --nodes)")
    run.add_argument("--inventory", default=DEFAULT_INVENTORY,
                     help="Ansible inventory (default: $WALLE_INVENTORY, else Consul's live "
                          "nodes through the scheduler's or the default lab's walle_consul.yml)")
    run.add_argument("--nodes", default="walle_nodes", help="host pattern (default: all nodes)")
    run.add_argument("--timeout", type=float, default=120.0)
    add_json_arg(run)
    run.add_argument("argv", nargs="+", metavar="-- CMD", help="the command and its arguments")
    run.set_defaults(func=cmd_exec)

    logs = subparsers.add_parser("logs", help="the journal of a job's instances")
    logs.add_argument("job")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("--inventory", default=DEFAULT_INVENTORY,
                      help="Ansible inventory (default: as for walle exec)")
    add_consul_args(logs)
    logs.set_defaults(func=cmd_logs)


def cmd_exec(args) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("walle exec: give a command after --", file=sys.stderr)
        return EXIT_USAGE
    results = run_command(args.inventory, args.nodes, argv, timeout=args.timeout)
    if not results:
        print(f"walle exec: no host matches {args.nodes!r} in {args.inventory}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json({h: r.__dict__ for h, r in results.items()})
    else:
        for host, r in results.items():
            status = "unreachable" if r.unreachable else f"rc={r.rc}"
            print(f"--- {host} ({status})")
            for stream in (r.stdout, r.stderr):
                if stream:
                    print(stream.rstrip())
    return EXIT_OK if all(r.rc == 0 for r in results.values()) else EXIT_FAILED


@cluster_command
def cmd_logs(args) -> int:
    api, store = connect(args)
    snap = load_snapshot(api, store)
    where: dict[str, list[tuple[str, int]]] = {}
    for r in snap.records.values():
        if r.alloc.job == args.job:
            where.setdefault(r.alloc.node, []).append((r.alloc.job, r.alloc.slot))
    if not where:
        print(f"walle logs: no instances of {args.job!r}", file=sys.stderr)
        return EXIT_FAILED
    failed, out = False, {}
    for node, slots in sorted(where.items()):
        slots.sort()
        argv = ["journalctl", "--no-pager", "-o", "short-iso", "-n", str(args.lines)]
        for job, slot in slots:
            # and the runs of a concurrency: allow cron slot (journalctl reads the glob)
            argv += ["-u", service_unit(job, slot), "-u", f"{unit_stem(job, slot)}@*.service"]
        result = run_command(args.inventory, [node], argv).get(node)
        units = [unit_stem(job, slot) for job, slot in slots]
        ok = result is not None and result.rc == 0
        failed |= not ok
        out[node] = {"units": units, "ok": ok, "journal": result.stdout if ok else "",
                     "error": "" if ok else (result.stderr if result else "no answer")}
        if not args.json:
            print(f"--- {node}: {', '.join(units)}")
            print(out[node]["journal"] if ok else "", end="")
            if not ok:
                print(out[node]["error"], file=sys.stderr)
    if args.json:
        print_json(out)
    return EXIT_FAILED if failed else EXIT_OK
