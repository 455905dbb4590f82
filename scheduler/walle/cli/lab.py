"""`walle lab up|status|down|kill|restart`: the local pool of nspawn nodes on this machine."""

from __future__ import annotations

import json
import os
import sys

from walle.cli.output import print_table
from walle.lab.nodes import Lab, LabError

DEFAULT_LAB = os.environ.get("WALLE_LAB", "default")


def register(subparsers) -> None:
    parser = subparsers.add_parser("lab", help="the local lab: a pool of nspawn nodes here")
    parser.add_argument("--name", default=DEFAULT_LAB, help="lab name (default: %(default)s)")
    actions = parser.add_subparsers(dest="lab_action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="boot the lab's nodes (cached rootfs, seconds when warm)")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default: 3)")
    status = actions.add_parser("status", help="nodes, addresses and whether they answer")
    status.add_argument("--json", action="store_true")
    actions.add_parser("down", help="stop the nodes and remove everything the lab made")
    for verb, text in (("kill", "hard-kill a node (SIGKILL, like a power loss)"),
                       ("restart", "boot a killed node again")):
        p = actions.add_parser(verb, help=text)
        p.add_argument("node")
    parser.set_defaults(func=run)


def run(args) -> int:
    lab = Lab(args.name)
    try:
        if args.lab_action == "up":
            lab.up(args.nodes)
            print(f"lab {args.name}: inventory {lab.inventory_path}")
            return 0
        if args.lab_action == "status":
            return _status(lab, args.json)
        if args.lab_action == "down":
            lab.down()
            return 0
        if args.lab_action == "kill":
            lab.kill_node(args.node)
            return 0
        lab.restart_node(args.node)
        return 0
    except LabError as exc:
        print(f"walle lab: {exc}", file=sys.stderr)
        return 1


def _status(lab: Lab, as_json: bool) -> int:
    rows = lab.status()
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"lab {lab.name} is not up")
    else:
        print_table(rows, ["name", "address", "pid", "running", "ssh"])
    return 0 if rows and all(r["running"] for r in rows) else 1
