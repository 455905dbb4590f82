"""Node commands: `walle nodes` (capacity, reserved, free, health) and `walle drain`."""

from __future__ import annotations

import sys

from walle.adapters.consul import fire_drain
from walle.cli.common import ActionError, add_consul_args, cluster_command, connect, print_json
from walle.cli.main import EXIT_FAILED, EXIT_OK
from walle.cli.output import print_table
from walle.service.cluster import load_snapshot

GIB = 1024 ** 3


def register(subparsers) -> None:
    nodes = subparsers.add_parser("nodes", help="nodes: capacity, reserved, free, health")
    add_consul_args(nodes)
    nodes.set_defaults(func=cmd_nodes)

    drain = subparsers.add_parser("drain", help="move every instance off a node")
    drain.add_argument("node")
    drain.add_argument("--undo", action="store_true", help="make the node schedulable again")
    add_consul_args(drain)
    drain.set_defaults(func=cmd_drain)


@cluster_command
def cmd_nodes(args) -> int:
    api, store = connect(args)
    snap = load_snapshot(api, store)
    rows = []
    for info in snap.health.nodes:
        node = snap.nodes.get(info.name)
        live = [r.alloc for r in snap.records.values()
                if r.alloc.node == info.name and r.alloc.live]
        cpu_used = sum(a.reserved.cpu for a in live)
        mem_used = sum(a.reserved.memory for a in live)
        rows.append({
            "node": info.name, "address": info.address,
            "state": node.state if node else "not schedulable",
            "health": info.health, "zone": info.zone, "instances": len(live),
            "cpu": info.cpu, "cpu_reserved": round(cpu_used, 2),
            "cpu_free": round(info.cpu - cpu_used, 2),
            "mem_gib": round(info.memory / GIB, 1), "mem_reserved_gib": round(mem_used / GIB, 2),
            "mem_free_gib": round((info.memory - mem_used) / GIB, 2),
        })
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["node", "address", "state", "health", "zone", "instances", "cpu",
                           "cpu_reserved", "cpu_free", "mem_gib", "mem_reserved_gib",
                           "mem_free_gib"])
    return EXIT_OK


@cluster_command
def cmd_drain(args) -> int:
    api, store = connect(args)
    try:
        drain_node(api, store, args.node, undo=args.undo)
    except ActionError as err:
        print(f"walle drain: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json({"node": args.node, "draining": not args.undo})
    else:
        print(f"{args.node}: schedulable again" if args.undo else
              f"{args.node}: draining; its instances move where there is room (`walle events` "
              "says where each went, or why it cannot move)")
    return EXIT_OK


def drain_node(api, store, node: str, undo: bool = False) -> None:
    """Set (or clear) a node's drain key; a drain also fires the drain event. Raises
    ActionError for a node Consul does not know."""
    known = {n.name for n in load_snapshot(api, store).health.nodes}
    if node not in known:
        raise ActionError(f"no node {node!r} (known: {', '.join(sorted(known))})")
    store.set_drain(node, not undo)
    if not undo:
        fire_drain(api, node)
