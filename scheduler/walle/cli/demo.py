"""`walle demo`: the main job on one machine.

Boots the lab (nspawn nodes, Serf, the Consul stand-in), provisions it with
`ansible-playbook site.yml`, starts two scheduler instances (one leads), submits
examples/web.yml, waits until every instance passes its checks, and prints where each instance
runs, its unit, its slice and its cgroup limits as systemd reports them, plus the DNS answer.

A job whose service asks for a load balancer (`service.lb`, as examples/web.yml does) gets one
more node: the HAProxy host (roles/lb, the `lb` group) and the spare a lost instance can move
to. Then the OS is shown at work: a client stream through HAProxy, a node running an instance
hard-killed, the instance moving, the stream's failed requests and longest gap, and the node
booted again. Everything stays up for you to explore (`walle status web`); `walle lab down`
removes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import dns.resolver

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.adapters.runner import REPO_ROOT, ansible_env, run_command
from walle.cli.common import progress
from walle.cli.jobs import ports_text
from walle.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from walle.cli.output import print_table
from walle.jobspec import SpecError, load_spec_file
from walle.lab.nodes import Lab, LabError
from walle.lab.traffic import Stream, haproxy_servers, summary
from walle.naming import instance_slice, service_unit
from walle.service.cluster import load_snapshot
from walle.service.jobs import submit

UNIT_PROPERTIES = ("ActiveState", "MainPID", "ControlGroup")
SLICE_PROPERTIES = ("CPUWeight", "CPUQuotaPerSecUSec", "MemoryMin", "MemoryHigh", "MemoryMax",
                    "TasksMax")
LB_STATS_PORT = 8404  # roles/lb walle_lb_stats_port (the role's default)
STREAM_RATE = 20.0  # client requests per second through HAProxy during the node kill


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the main job: a lab running the example service")
    parser.add_argument("--lab", default="default", help="lab name (default: %(default)s)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--job", default=str(REPO_ROOT / "examples" / "web.yml"))
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for every instance to pass")
    parser.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    try:
        spec = load_spec_file(args.job)
    except SpecError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE
    balanced = spec.service is not None and spec.service.lb is not None
    nodes = args.nodes + 1 if balanced else args.nodes  # the last: HAProxy and a spare
    started = time.monotonic()
    try:
        lab = Lab(args.lab, progress=progress)
        lab.up(nodes)
        consul_addr = lab.start_consul()
    except LabError as err:
        print(f"walle demo: {err}", file=sys.stderr)
        return EXIT_FAILED
    lb_node = f"node{nodes}" if balanced else None
    if lb_node:
        put_in_lb_group(lab, lb_node)
    progress(f"provisioning {nodes} node(s) with ansible-playbook site.yml"
             + (f" (HAProxy on {lb_node})" if lb_node else "") + " ...")
    if provision(lab) != 0:
        return EXIT_FAILED
    start_schedulers(lab, consul_addr)
    api = ConsulApi(ConsulConfig.from_env(addr=consul_addr))
    store = StateStore(api)
    submit(store, spec)
    progress(f"submitted {spec.name}; waiting for {spec.count} instance(s) to pass ...")
    if not wait_running(api, store, spec.name, spec.count, args.timeout):
        print(f"walle demo: {spec.name} did not converge within {args.timeout:.0f}s; see "
              f"{lab.dir}/scheduler-*.log", file=sys.stderr)
        return EXIT_FAILED
    show_placement(lab, api, store, spec.name)
    show_dns(lab, spec)
    print(f"\nready in {time.monotonic() - started:.1f}s.")
    frontend = None
    if lb_node:
        address = {n.name: n.address for n in lab.nodes}[lb_node]
        frontend = f"{address}:{spec.service.lb.port}"
        if not TrafficScene(lab, api, store, spec, lb_node, frontend, args.timeout).play():
            return EXIT_FAILED
    busy = sorted({r.alloc.node for r in load_snapshot(api, store).records.values()
                   if r.alloc.job == spec.name and r.alloc.node != lb_node})
    print(try_next(spec, consul_addr, args.lab, frontend, victim=busy[0] if busy else "node2"))
    return EXIT_OK


def try_next(spec, consul_addr: str, lab: str, frontend: str | None = None,
             victim: str = "node2") -> str:
    """What to try on the lab just built. Every command parses (tests/unit/test_demo_try.py);
    what they show is tested on real labs: a killed node's instance moves to a free node
    (tests/lab/test_scheduler_lab.py), a node added takes work (tests/lab/test_members_lab.py),
    the console shows a kill (tests/lab/test_console_lab.py), HAProxy follows the instances
    (tests/lab/test_lb_lab.py). `frontend`: the HAProxy frontend (address:port) of the job;
    `victim`: a node that runs an instance (and not HAProxy), so killing it loses one."""
    name, lab_cmd = spec.name, "walle lab" if lab == "default" else f"walle lab --name {lab}"
    lines = [
        f"Try (export CONSUL_HTTP_ADDR={consul_addr}):",
        f"  walle status {name}               # each instance: node, port, health",
        f"  {lab_cmd} kill {victim}              # a node running an instance dies",
        f"  walle status {name}; walle events {name}; walle plan {name} --explain",
        "                                  # the lost instance, where it went and why",
        f"  {lab_cmd} restart {victim}           # the node boots again and rejoins",
        f"  {lab_cmd} add                     # a new node joins by itself and takes work",
        "  walle ui                         # the console: http://127.0.0.1:8470",
    ]
    if frontend:
        host = frontend.rsplit(":", 1)[0]
        lines += [
            f"  curl http://{frontend}/         # {name} through HAProxy, wherever it runs",
            f"  curl 'http://{host}:{LB_STATS_PORT}/stats;csv'   # HAProxy's servers: one "
            "per passing instance",
        ]
    return "\n".join([*lines, f"  {lab_cmd} down"])


def put_in_lb_group(lab: Lab, node: str) -> None:
    """Make `node` the lab's HAProxy host: an extra inventory file that provision() adds."""
    lb_inventory(lab).write_text(f"lb: {{hosts: {{{node}: }}}}\n")


def lb_inventory(lab: Lab) -> Path:
    return lab.dir / "lb.yml"


def provision(lab: Lab, limit: list[str] | None = None) -> int:
    """site.yml on the lab's nodes (`limit`: only these, e.g. nodes just added), with the
    lab's `lb` group when it has one (put_in_lb_group)."""
    env = {**os.environ, **ansible_env(), "WALLE_LAB": lab.name}
    extra = ["-i", str(lb_inventory(lab))] if lb_inventory(lab).exists() else []
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab.inventory_path),
         *extra, *(["--limit", ",".join(limit)] if limit else []),
         str(REPO_ROOT / "site.yml")],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    recap = proc.stdout[proc.stdout.rfind("PLAY RECAP"):] if "PLAY RECAP" in proc.stdout else ""
    progress(recap.strip() or proc.stdout[-2000:])
    if proc.returncode != 0:
        print(f"walle demo: site.yml failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}"
              f"{proc.stderr[-2000:]}", file=sys.stderr)
    return proc.returncode


def start_schedulers(lab: Lab, consul_addr: str, count: int = 2,
                     extra: Sequence[str] = ()) -> None:
    """Start `count` schedulers; `extra`: more `walle scheduler run` options (bench/chaos.py's
    --max-inflight-batches)."""
    for n in range(1, count + 1):
        lab.start_process(f"scheduler-{n}", [
            str(Path(sys.executable).parent / "walle"), "scheduler", "run",
            "--consul-addr", consul_addr, "--inventory", str(lab.pool_inventory_path),
            "--node-consul-addr", consul_addr, "--name", f"{lab.name}-scheduler-{n}",
            "--lock-delay", "5", *extra,
        ], f"scheduler-{n}.log")


def wait_running(api: ConsulApi, store: StateStore, job: str, count: int,
                 timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        snap = load_snapshot(api, store)
        states = [r.alloc.state for r in snap.records.values() if r.alloc.job == job]
        line = f"{job}: {states.count('running')}/{count} running, {states.count('pending')} " \
               f"pending, {states.count('failed')} failed"
        if line != last:
            progress(line)
            last = line
        if states.count("running") == count and len(states) == count:
            return True
        time.sleep(0.25)
    return False


def show_placement(lab: Lab, api: ConsulApi, store: StateStore, job: str) -> None:
    snap = load_snapshot(api, store)
    records = sorted((r for r in snap.records.values() if r.alloc.job == job),
                     key=lambda r: r.alloc.slot)
    rows = []
    for r in records:
        unit = service_unit(r.alloc.job, r.alloc.slot)
        slice_name = instance_slice(r.alloc.job, r.alloc.slot)
        rows.append({"instance": r.key, "node": r.alloc.node,
                     "address": snap.addresses.get(r.alloc.node),
                     "ports": ports_text(r.alloc),
                     "unit": unit,
                     "slice": slice_name, "health": snap.instance_status(r.alloc.node, r.key),
                     **systemctl_show(lab, r.alloc.node, unit, UNIT_PROPERTIES),
                     **systemctl_show(lab, r.alloc.node, slice_name, SLICE_PROPERTIES)})
    print(f"\n{job}: placement")
    print_table(rows, ["instance", "node", "address", "ports", "unit", "slice", "health",
                       "ActiveState", "MainPID"])
    print(f"\n{job}: cgroup limits of each instance's slice as systemd reports them "
          "(systemctl show)")
    print_table(rows, ["instance", *SLICE_PROPERTIES, "ControlGroup"])


def systemctl_show(lab: Lab, node: str, unit: str, properties: tuple[str, ...]) -> dict:
    shown = run_command(str(lab.inventory_path), [node],
                        ["systemctl", "show", unit, "-p", ",".join(properties)])
    out = shown[node].stdout if node in shown else ""
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def show_dns(lab: Lab, spec) -> None:
    if spec.service is None:
        return
    host, port = lab.consul_dns_addr
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [host], port, 3.0
    name = f"{spec.service.name}.service.consul"
    try:
        srv = resolver.resolve(name, "SRV")
    except Exception as err:  # noqa: BLE001 - shown to the operator, not hidden
        print(f"\nDNS {name} SRV: {err}")
        return
    answers = sorted(f"{r.target.to_text()}:{r.port}" for r in srv)
    print(f"\nDNS: dig @{host} -p {port} {name} SRV -> {', '.join(answers)}")


class TrafficScene:
    """The OS at work: a client stream through HAProxy while a node running an instance is
    hard-killed, the instance moves, and the node comes back. Prints each step as it happens
    and the stream's figures; every wait is bounded by `timeout`."""

    def __init__(self, lab: Lab, api: ConsulApi, store: StateStore, spec, lb_node: str,
                 frontend: str, timeout: float) -> None:
        self.lab, self.api, self.store, self.spec = lab, api, store, spec
        self.lb_node, self.timeout = lb_node, timeout
        self.url = f"http://{frontend}/"
        self.stats = f"http://{frontend.rsplit(':', 1)[0]}:{LB_STATS_PORT}/stats"
        self.node_of = {n.address: n.name for n in lab.nodes}

    def play(self) -> bool:
        job, count = self.spec.name, self.spec.count
        print(f"\nHAProxy on {self.lb_node}: {self.url} -> {job}")
        if not self._wait(f"HAProxy serving {count} instance(s)",
                          lambda: len(self.servers_up()) == count):
            return False
        stream = Stream(self.url, rate=STREAM_RATE, max_seconds=self.timeout * 3).start()
        try:
            time.sleep(3)
            return self._kill_and_return(stream)
        finally:
            replies = stream.stop()
            figures = summary(replies)
            share = figures["failed"] / figures["sent"] if figures["sent"] else 0.0
            print(f"client stream ({STREAM_RATE:g} requests/s through HAProxy): sent "
                  f"{figures['sent']}, failed {figures['failed']} ({share:.1%}), longest gap "
                  f"{figures['longest_gap_s']:.2f}s"
                  + (f", errors {figures['errors']}" if figures["errors"] else ""))
            self.show_servers()

    def _kill_and_return(self, stream: Stream) -> bool:
        before = self.placement()
        victims = sorted(n for n in before.values() if n != self.lb_node)
        if not victims:
            print("no instance runs outside the HAProxy host: nothing to kill")
            return True
        victim = victims[0]
        moved = sorted(k for k, n in before.items() if n == victim)
        print(f"killing {victim} (runs {', '.join(moved)}) while a client sends "
              f"{STREAM_RATE:g} requests/s through HAProxy ...")
        t_kill = time.monotonic()
        self.lab.kill_node(victim)
        if self._wait(f"HAProxy marks {victim}'s server down",
                      lambda: victim not in self.servers_up().values(), every=0.1):
            print(f"  {time.monotonic() - t_kill:5.1f}s  HAProxy marked {victim}'s server down; "
                  f"failed so far {summary(stream.snapshot(t_kill))['failed']}")
        if not self._wait(f"{', '.join(moved)} running elsewhere", lambda: all(
                self.placement().get(k) not in (None, victim) for k in moved)):
            return False
        after = self.placement()
        for key in moved:
            print(f"  {time.monotonic() - t_kill:5.1f}s  {key} moved: {victim} -> {after[key]}")
        if self._wait(f"HAProxy serving {self.spec.count} again",
                      lambda: len(self.servers_up()) == self.spec.count):
            print(f"  {time.monotonic() - t_kill:5.1f}s  HAProxy sends traffic to every "
                  "instance again")
        print(f"booting {victim} again ...")
        self.lab.restart_node(victim)
        if not self._wait(f"{victim} ready", lambda: self.node_state(victim) == "ready"):
            return False
        print(f"  {time.monotonic() - t_kill:5.1f}s  {victim} is back and ready for new work "
              "(the moved instance stays where it runs)")
        time.sleep(2)
        return True

    def placement(self) -> dict[str, str]:
        """instance -> node of the job's running instances."""
        records = load_snapshot(self.api, self.store).records.values()
        return {r.key: r.alloc.node for r in records
                if r.alloc.job == self.spec.name and r.alloc.state == "running"}

    def node_state(self, node: str) -> str:
        info = load_snapshot(self.api, self.store).nodes.get(node)
        return info.state if info else "unknown"

    def servers_up(self) -> dict[str, str]:
        """HAProxy's UP servers of the job's backend: server -> node."""
        return {s.name: self.node_of.get(s.address.split(":")[0], s.address)
                for s in haproxy_servers(self.stats) if s.backend == f"walle-{self.spec.name}"
                and s.status.startswith("UP")}

    def show_servers(self) -> None:
        try:
            servers = [s for s in haproxy_servers(self.stats)
                       if s.backend == f"walle-{self.spec.name}" and s.address]
        except OSError as err:
            print(f"HAProxy stats: {err}")
            return
        print_table([{"server": s.name, "node": self.node_of.get(s.address.split(":")[0], "?"),
                      "address": s.address, "status": s.status, "requests": s.sessions}
                     for s in servers], ["server", "node", "address", "status", "requests"])

    def _wait(self, what: str, probe, every: float = 0.5) -> bool:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                if probe():
                    return True
            except OSError:
                pass  # HAProxy or Consul not answering yet: ask again
            time.sleep(every)
        print(f"walle demo: {what}: not within {self.timeout:.0f}s", file=sys.stderr)
        return False
