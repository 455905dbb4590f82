"""`walle demo`: the main job on one machine.

Boots the lab (nspawn nodes, Serf, the Consul stand-in), provisions it with
`ansible-playbook site.yml`, starts two scheduler instances (one leads), submits
examples/web.yml, waits until every instance passes its checks, and prints where each instance
runs, its unit, its slice and its cgroup limits as systemd reports them, plus the DNS answer.
Everything stays up for you to explore (`walle status web`); `walle lab down` removes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
from walle.naming import instance_slice, service_unit
from walle.service.cluster import load_snapshot
from walle.service.jobs import submit

UNIT_PROPERTIES = ("ActiveState", "MainPID", "ControlGroup")
SLICE_PROPERTIES = ("CPUWeight", "CPUQuotaPerSecUSec", "MemoryMin", "MemoryHigh", "MemoryMax",
                    "TasksMax")


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
    started = time.monotonic()
    try:
        lab = Lab(args.lab, progress=progress)
        lab.up(args.nodes)
        consul_addr = lab.start_consul()
    except LabError as err:
        print(f"walle demo: {err}", file=sys.stderr)
        return EXIT_FAILED
    progress(f"provisioning {args.nodes} node(s) with ansible-playbook site.yml ...")
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
    print(try_next(spec, consul_addr, args.lab))
    return EXIT_OK


def try_next(spec, consul_addr: str, lab: str) -> str:
    """What to try on the lab just built. Every command parses (tests/unit/test_demo_try.py);
    what they show is tested on real labs: a killed node's instance is lost with its reason
    (tests/lab/test_scheduler_lab.py), a node added takes work (tests/lab/test_members_lab.py),
    the console shows a kill (tests/lab/test_console_lab.py)."""
    name, lab_cmd = spec.name, "walle lab" if lab == "default" else f"walle lab --name {lab}"
    return "\n".join([
        f"Try (export CONSUL_HTTP_ADDR={consul_addr}):",
        f"  walle status {name}               # where each instance runs, on which port",
        f"  {lab_cmd} kill node2              # a node dies",
        f"  walle status {name}; walle events {name}; walle plan {name} --explain",
        "                                  # the lost instance moves; a port of its new node",
        f"  {lab_cmd} add                     # a new node joins by itself; the instance "
        "moves there",
        "  walle ui                         # the console: http://127.0.0.1:8470",
        f"  {lab_cmd} down",
    ])


def provision(lab: Lab, limit: list[str] | None = None) -> int:
    """site.yml on the lab's nodes (`limit`: only these, e.g. nodes just added)."""
    env = {**os.environ, **ansible_env(), "WALLE_LAB": lab.name}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab.inventory_path),
         *(["--limit", ",".join(limit)] if limit else []), str(REPO_ROOT / "site.yml")],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    recap = proc.stdout[proc.stdout.rfind("PLAY RECAP"):] if "PLAY RECAP" in proc.stdout else ""
    progress(recap.strip() or proc.stdout[-2000:])
    if proc.returncode != 0:
        print(f"walle demo: site.yml failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}"
              f"{proc.stderr[-2000:]}", file=sys.stderr)
    return proc.returncode


def start_schedulers(lab: Lab, consul_addr: str, count: int = 2) -> None:
    for n in range(1, count + 1):
        lab.start_process(f"scheduler-{n}", [
            str(Path(sys.executable).parent / "walle"), "scheduler", "run",
            "--consul-addr", consul_addr, "--inventory", str(lab.pool_inventory_path),
            "--node-consul-addr", consul_addr, "--name", f"{lab.name}-scheduler-{n}",
            "--lock-delay", "5",
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
