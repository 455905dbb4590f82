"""`walle lab up|status|add|remove|down|kill|restart`: the local pool of nspawn nodes (and qemu
VM nodes, `--vm-nodes`/`--vm`) on this machine."""

from __future__ import annotations

import json
import os
import sys
import time

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore, fire_drain, nodes
from walle.adapters.runner import run_command
from walle.cli.main import add_json_arg
from walle.cli.output import print_table
from walle.lab.nodes import Lab, LabError
from walle.service.cluster import load_snapshot

DEFAULT_LAB = os.environ.get("WALLE_LAB", "default")


def register(subparsers) -> None:
    parser = subparsers.add_parser("lab", help="the local lab: a pool of nspawn nodes here")
    parser.add_argument("--name", default=DEFAULT_LAB, help="lab name (default: %(default)s)")
    actions = parser.add_subparsers(dest="lab_action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="boot the lab's nodes (cached rootfs, seconds when warm)")
    up.add_argument("--nodes", type=int, default=3, help="number of nspawn nodes (default: 3)")
    up.add_argument("--vm-nodes", type=int, default=0, metavar="K",
                    help="and K qemu VM nodes after them (real cgroup v2; minutes to boot "
                         "under tcg; default: 0)")
    status = actions.add_parser("status", help="nodes, addresses and whether they answer")
    add_json_arg(status)
    actions.add_parser("down", help="stop the nodes and remove everything the lab made")
    add = actions.add_parser("add", help="boot more nodes into the running lab and provision "
                                         "them (site.yml --limit); the scheduler finds them "
                                         "in Consul")
    add.add_argument("count", nargs="?", type=int, default=1, help="how many (default: 1)")
    add.add_argument("--vm", action="store_true",
                     help="qemu VM nodes (real cgroup v2; minutes to boot and provision)")
    remove = actions.add_parser("remove", help="drain a node, make it leave Consul, power it "
                                               "off and forget it")
    remove.add_argument("node")
    remove.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="how long to wait for its instances to move (default: 300)")
    remove.add_argument("--force", action="store_true",
                        help="power it off even if instances are still placed on it")
    for verb, text in (("kill", "hard-kill a node (SIGKILL, like a power loss)"),
                       ("restart", "boot a killed node again")):
        p = actions.add_parser(verb, help=text)
        p.add_argument("node")
    parser.set_defaults(func=run)


def run(args) -> int:
    lab = Lab(args.name)
    try:
        if args.lab_action == "up":
            lab.up(args.nodes, vm_nodes=args.vm_nodes)
            print(f"lab {args.name}: inventory {lab.inventory_path}")
            return 0
        if args.lab_action == "status":
            return _status(lab, args.json)
        if args.lab_action == "down":
            lab.down()
            return 0
        if args.lab_action == "add":
            return _add(lab, args.count, args.vm)
        if args.lab_action == "remove":
            return _remove(lab, args.node, args.timeout, args.force)
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
        print_table(rows, ["name", "kind", "address", "pid", "running", "ssh"])
    return 0 if rows and all(r["running"] for r in rows) else 1


def _add(lab: Lab, count: int, vm: bool = False) -> int:
    from walle.cli.demo import provision  # demo imports cli.main, which imports this module

    added = [node.name for node in lab.add(count, vm=vm)]
    if provision(lab, limit=added) != 0:
        print(f"walle lab add: booted {', '.join(added)} but site.yml failed on them; run "
              f"`walle lab remove` for each, or fix and run site.yml --limit again",
              file=sys.stderr)
        return 1
    print(f"lab {lab.name}: added {', '.join(added)} (provisioned; they join Consul and the "
          f"scheduler places work there)")
    return 0


def _remove(lab: Lab, node: str, timeout: float, force: bool) -> int:
    """Drain (its instances move), leave (Serf: gone from Consul's catalog), power off, and
    clear what pointed at it (the drain key, the inventory entry)."""
    if all(n.name != node for n in lab.nodes):
        raise LabError(f"no node {node!r} in lab {lab.name!r}")
    store = None
    if lab.process_running("consul-standin"):
        api = ConsulApi(ConsulConfig.from_env(addr=lab.consul_http_addr))
        store = StateStore(api)
        store.set_drain(node)
        fire_drain(api, node)
        held = _wait_moved(api, store, node, timeout)
        if held and not force:
            store.set_drain(node, False)
            print(f"walle lab remove: {node} still holds {', '.join(held)} after "
                  f"{timeout:.0f}s (is a scheduler running?); it is left as it was. "
                  "--force powers it off anyway", file=sys.stderr)
            return 1
        run_command(str(lab.inventory_path), [node], ["systemctl", "stop", "walle-serf"],
                    timeout=30)
        _wait_left(api, node, 30.0)
    lab.remove_node(node)
    if store is not None:
        store.set_drain(node, False)
    print(f"lab {lab.name}: removed {node}")
    return 0


def _instances_on(api: ConsulApi, store: StateStore, node: str) -> list[str]:
    records = load_snapshot(api, store).records.values()
    return sorted(r.key for r in records
                  if r.alloc.node == node or (r.previous and r.previous.node == node))


def _wait_moved(api: ConsulApi, store: StateStore, node: str, timeout: float) -> list[str]:
    """The slots still placed on `node` once they moved or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while (held := _instances_on(api, store, node)) and time.monotonic() < deadline:
        time.sleep(1.0)
    return held


def _wait_left(api: ConsulApi, node: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(n.name == node for n in nodes(api)):
        if time.monotonic() > deadline:
            raise LabError(f"{node} did not leave Consul's catalog within {timeout:.0f}s")
        time.sleep(0.5)
