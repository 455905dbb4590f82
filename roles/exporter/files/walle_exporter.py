#!/usr/bin/python3
"""walle-exporter: what every Walle instance on this node really uses.

Runs on the node (Debian python3 with python3-prometheus-client and python3-psutil; it never
imports the scheduler package). On each scrape it asks systemd for the Walle units
(`systemctl show walle-*.service walle-*.slice`: cgroup path, NRestarts, MemoryMax) and reads
each instance's usage:

- from its cgroup v2 files where the kernel keeps them (cpu.stat usage_usec, memory.current,
  io.stat), which is the case on every cgroup v2 host; with the cpu controller on (a CPU quota)
  cpu.stat also counts the quota's periods and those the kernel throttled the instance in
  (nr_periods, nr_throttled, throttled_usec), and cpu.pressure its CPU stall time (PSI);
- else from psutil over the processes in the unit's cgroup (cgroup.procs): nested lab nodes run
  systemd in hybrid mode, where the v2 tree has cpu.stat but no memory or io files.

It serves the samples as Prometheus metrics (/metrics, rendered by prometheus_client) and as a
compact JSON summary (/summary) for the scheduler. One sample is shared by both endpoints and
reused for `--min-interval` seconds, so a burst of scrapes costs one collection.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
# walle-<job with dashes as underscores>-<slot>.service (see walle/naming.py)
_UNIT = re.compile(r"^walle-(?P<job>[a-z0-9_]+)-(?P<slot>\d+)\.(?P<kind>service|slice)$")
_PROPS = "Id,ActiveState,NRestarts,ControlGroup,MemoryMax"


@dataclass
class Instance:
    """One Walle instance's usage. None: not measurable here (and not exported)."""
    job: str
    slot: int
    unit: str
    active: bool = False
    restarts: int = 0
    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    memory_max_bytes: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    processes: int = 0
    cpu_percent: float | None = None
    # CPU bandwidth (cpu.stat, where the cpu controller is on) and stall (cpu.pressure)
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_seconds: float | None = None
    cpu_pressure_some_seconds: float | None = None
    # share of the periods since the previous sample in which the kernel throttled it
    cpu_throttled_share: float | None = None
    sources: dict[str, str] = field(default_factory=dict)


# ----- systemd --------------------------------------------------------------------------------

def parse_systemctl_show(text: str) -> list[dict[str, str]]:
    """`systemctl show` output for several units: blank-line separated KEY=VALUE blocks."""
    blocks = []
    for block in text.split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            blocks.append(props)
    return blocks


def read_units() -> list[dict[str, str]]:
    proc = subprocess.run(
        ["systemctl", "show", "-p", _PROPS, "walle-*.service", "walle-*.slice"],
        capture_output=True, text=True, timeout=10, check=False)
    return parse_systemctl_show(proc.stdout)


def instances_from_units(units: list[dict[str, str]]) -> dict[str, tuple[Instance, str]]:
    """Instance per service unit, with its cgroup path; the limit comes from whichever of the
    service and its instance slice (where Walle puts it) is tighter."""
    found: dict[str, tuple[Instance, str]] = {}
    slice_max: dict[str, int] = {}
    for props in units:
        match = _UNIT.match(props["Id"])
        if not match:
            continue  # walle-<job>.slice, timers and anything else that is not an instance
        control_group = props.get("ControlGroup", "")
        if control_group and not control_group.startswith("/walle.slice/"):
            continue  # a node daemon named like an instance (walle-<x>-<n>) is not one
        stem = props["Id"].rsplit(".", 1)[0]
        limit = _bytes_or_none(props.get("MemoryMax", ""))
        if match["kind"] == "slice":
            if limit is not None:
                slice_max[stem] = limit
            continue
        inst = Instance(job=match["job"].replace("_", "-"), slot=int(match["slot"]),
                        unit=props["Id"], active=props.get("ActiveState") == "active",
                        restarts=_int(props.get("NRestarts", "")) or 0,
                        memory_max_bytes=limit)
        found[stem] = (inst, control_group)
    for stem, (inst, _props) in found.items():
        limits = [v for v in (inst.memory_max_bytes, slice_max.get(stem)) if v is not None]
        inst.memory_max_bytes = min(limits) if limits else None
    return found


# ----- cgroup v2 files ------------------------------------------------------------------------

def parse_cpu_stat(text: str) -> float | None:
    """cpu.stat -> CPU seconds (usage_usec), None when the line is missing."""
    usec = cpu_stat_fields(text).get("usage_usec")
    return None if usec is None else usec / 1e6


def cpu_stat_fields(text: str) -> dict[str, int]:
    """cpu.stat `key value` lines -> {key: int} (usage_usec, nr_periods, nr_throttled,
    throttled_usec, ...); lines that are not a key and a count are skipped."""
    fields = {}
    for line in text.splitlines():
        key, _space, value = line.partition(" ")
        if value.strip().isdigit():
            fields[key] = int(value)
    return fields


def parse_pressure_some(text: str) -> float | None:
    """cpu.pressure (PSI) -> seconds some task of the cgroup stalled waiting for a CPU
    (the `some` line's total=, in microseconds)."""
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["some"]:
            for word in words[1:]:
                key, _equals, value = word.partition("=")
                if key == "total" and value.isdigit():
                    return int(value) / 1e6
    return None


def parse_io_stat(text: str) -> tuple[int, int]:
    """io.stat lines `MAJ:MIN rbytes=.. wbytes=.. rios=..` -> (read, written) over devices."""
    read = written = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _equals, value = item.partition("=")
            if key == "rbytes" and value.isdigit():
                read += int(value)
            elif key == "wbytes" and value.isdigit():
                written += int(value)
    return read, written


def cgroup_dir(control_group: str, roots: tuple[str, ...] = CGROUP_ROOTS) -> str | None:
    """The v2 directory of a unit's cgroup: /sys/fs/cgroup/unified on hybrid hosts, else
    /sys/fs/cgroup. A v1 hierarchy has no cgroup.procs at that path, so it is never picked."""
    if not control_group.startswith("/") or ".." in control_group.split("/"):
        return None
    for root in roots:
        path = root + control_group
        if os.path.exists(os.path.join(path, "cgroup.procs")) and \
                os.path.exists(os.path.join(path, "cgroup.controllers")):
            return path
    return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def measure_cgroup(inst: Instance, path: str) -> list[int]:
    """Fill what the cgroup's v2 files tell; return its PIDs for the psutil fallback."""
    cpu = cpu_stat_fields(_read(os.path.join(path, "cpu.stat")) or "")
    if "usage_usec" in cpu:
        inst.cpu_seconds, inst.sources["cpu"] = cpu["usage_usec"] / 1e6, "cgroup"
    if "nr_periods" in cpu and "nr_throttled" in cpu:  # the cpu controller is on
        inst.cpu_periods, inst.cpu_throttled_periods = cpu["nr_periods"], cpu["nr_throttled"]
        if "throttled_usec" in cpu:
            inst.cpu_throttled_seconds = cpu["throttled_usec"] / 1e6
    pressure = _read(os.path.join(path, "cpu.pressure"))
    if pressure is not None:
        inst.cpu_pressure_some_seconds = parse_pressure_some(pressure)
    memory = _read(os.path.join(path, "memory.current"))
    if memory is not None and memory.strip().isdigit():
        inst.memory_bytes, inst.sources["memory"] = int(memory), "cgroup"
    io = _read(os.path.join(path, "io.stat"))
    if io is not None:
        inst.io_read_bytes, inst.io_write_bytes = parse_io_stat(io)
        inst.sources["io"] = "cgroup"
    procs = _read(os.path.join(path, "cgroup.procs")) or ""
    return [int(p) for p in procs.split() if p.isdigit()]


# ----- psutil fallback ------------------------------------------------------------------------

def measure_processes(inst: Instance, pids: list[int], psutil_module=None) -> None:
    """What cgroup files did not give, summed over the cgroup's processes with psutil.
    CPU is then the time of the live processes only (exited ones take theirs with them);
    IO needs ptrace rights over the workload's user, so an unprivileged exporter usually
    reports none."""
    inst.processes = len(pids)
    if "cpu" in inst.sources and "memory" in inst.sources and "io" in inst.sources:
        return
    psutil = psutil_module or _psutil()
    cpu = 0.0
    rss = read = written = 0
    io_seen = False
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
                try:
                    io = proc.io_counters()
                    read, written, io_seen = read + io.read_bytes, written + io.write_bytes, True
                except (psutil.AccessDenied, AttributeError):
                    pass
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # exited between cgroup.procs and now
        except psutil.AccessDenied:
            continue
    if "cpu" not in inst.sources:
        inst.cpu_seconds, inst.sources["cpu"] = cpu, "psutil"
    if "memory" not in inst.sources:
        inst.memory_bytes, inst.sources["memory"] = rss, "psutil"
    if "io" not in inst.sources and io_seen:
        inst.io_read_bytes, inst.io_write_bytes, inst.sources["io"] = read, written, "psutil"


def _psutil():
    import psutil  # Debian python3-psutil; imported late so the parsers test without it
    return psutil


# ----- one sample -----------------------------------------------------------------------------

def collect(units: list[dict[str, str]], roots: tuple[str, ...] = CGROUP_ROOTS,
            psutil_module=None) -> list[Instance]:
    instances = []
    for inst, control_group in instances_from_units(units).values():
        path = cgroup_dir(control_group, roots) if inst.active else None
        pids = measure_cgroup(inst, path) if path else []
        if inst.active:
            measure_processes(inst, pids, psutil_module)
        instances.append(inst)
    return sorted(instances, key=lambda i: (i.job, i.slot))


# what a sample keeps of each instance for the next one's rates
Counters = tuple[float | None, int | None, int | None]  # cpu_seconds, periods, throttled


def counters(inst: Instance) -> Counters:
    return inst.cpu_seconds, inst.cpu_periods, inst.cpu_throttled_periods


def add_rates(now: list[Instance], before: dict[str, Counters], elapsed: float) -> None:
    """Since the previous sample (None on the first one or after a counter reset): CPU % of
    one core, and the share of the CPU quota's periods in which the instance was throttled."""
    for inst in now:
        old_cpu, old_periods, old_throttled = before.get(inst.unit, (None, None, None))
        if elapsed > 0 and inst.cpu_seconds is not None and old_cpu is not None \
                and inst.cpu_seconds >= old_cpu:
            inst.cpu_percent = round(100.0 * (inst.cpu_seconds - old_cpu) / elapsed, 2)
        if None in (inst.cpu_periods, inst.cpu_throttled_periods, old_periods, old_throttled):
            continue
        periods = inst.cpu_periods - old_periods
        throttled = inst.cpu_throttled_periods - old_throttled
        if periods > 0 and 0 <= throttled <= periods:
            inst.cpu_throttled_share = round(throttled / periods, 4)


def summary(node: str, taken_at: float, instances: list[Instance]) -> dict:
    """The compact JSON the scheduler reads: per instance and node totals."""
    def total(attr: str):
        values = [getattr(i, attr) for i in instances if getattr(i, attr) is not None]
        return sum(values) if values else None
    return {
        "node": node,
        "time": round(taken_at, 3),
        "instances": {f"{i.job}-{i.slot}": {k: v for k, v in asdict(i).items()
                                            if v is not None} for i in instances},
        "totals": {"instances": len(instances),
                   "active": sum(i.active for i in instances),
                   "cpu_seconds": total("cpu_seconds"), "cpu_percent": total("cpu_percent"),
                   "memory_bytes": total("memory_bytes"),
                   "io_read_bytes": total("io_read_bytes"),
                   "io_write_bytes": total("io_write_bytes"),
                   "restarts": total("restarts")},
    }


class Sampler:
    """Shares one collection between /metrics and /summary for `min_interval` seconds."""

    def __init__(self, node: str, min_interval: float, read=None, clock=time.time,
                 roots: tuple[str, ...] = CGROUP_ROOTS, psutil_module=None):
        self.node, self.min_interval, self.roots = node, min_interval, roots
        self._read = read or read_units
        self._clock, self._psutil = clock, psutil_module
        self._lock = threading.Lock()
        self._taken_at = 0.0
        self._instances: list[Instance] = []
        self._before: dict[str, Counters] = {}

    def sample(self) -> tuple[float, list[Instance]]:
        with self._lock:
            now = self._clock()
            if self._instances and now - self._taken_at < self.min_interval:
                return self._taken_at, self._instances
            instances = collect(self._read(), self.roots, self._psutil)
            add_rates(instances, self._before, now - self._taken_at)
            self._before = {i.unit: counters(i) for i in instances}
            self._taken_at, self._instances = now, instances
            return now, instances

    def summary(self) -> dict:
        return summary(self.node, *self.sample())


# ----- Prometheus -----------------------------------------------------------------------------

class UsageCollector:
    """prometheus_client custom collector: one family per measure, built on each scrape."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        _taken_at, instances = self.sampler.sample()
        labels = ["job", "slot", "unit"]

        def family(kind, name, doc, attr):
            metric = kind(name, doc, labels=labels)
            for i in instances:
                value = getattr(i, attr)
                if value is not None:
                    metric.add_metric([i.job, str(i.slot), i.unit], value)
            return metric

        yield family(CounterMetricFamily, "walle_usage_cpu_seconds",
                     "CPU time used by the instance's cgroup", "cpu_seconds")
        yield family(CounterMetricFamily, "walle_usage_cpu_periods",
                     "CPU quota periods elapsed (cpu.stat nr_periods, where the cpu "
                     "controller is on)", "cpu_periods")
        yield family(CounterMetricFamily, "walle_usage_cpu_throttled_periods",
                     "periods in which the instance was throttled at its CPU quota "
                     "(cpu.stat nr_throttled)", "cpu_throttled_periods")
        yield family(CounterMetricFamily, "walle_usage_cpu_throttled_seconds",
                     "time the instance was throttled at its CPU quota (cpu.stat "
                     "throttled_usec)", "cpu_throttled_seconds")
        yield family(CounterMetricFamily, "walle_usage_cpu_pressure_some_seconds",
                     "time some task of the instance stalled waiting for a CPU (PSI "
                     "cpu.pressure some total)", "cpu_pressure_some_seconds")
        yield family(GaugeMetricFamily, "walle_usage_cpu_throttled_share",
                     "share of the periods since the previous sample in which the instance "
                     "was throttled", "cpu_throttled_share")
        yield family(GaugeMetricFamily, "walle_usage_memory_bytes",
                     "memory in use (memory.current, else RSS of its processes)",
                     "memory_bytes")
        yield family(GaugeMetricFamily, "walle_usage_memory_max_bytes",
                     "MemoryMax of the instance (service or its slice), when finite",
                     "memory_max_bytes")
        yield family(CounterMetricFamily, "walle_usage_io_read_bytes",
                     "bytes read (io.stat, else /proc/<pid>/io where readable)",
                     "io_read_bytes")
        yield family(CounterMetricFamily, "walle_usage_io_write_bytes",
                     "bytes written (io.stat, else /proc/<pid>/io where readable)",
                     "io_write_bytes")
        yield family(CounterMetricFamily, "walle_usage_restarts",
                     "automatic restarts of the unit (systemd NRestarts)", "restarts")
        yield family(GaugeMetricFamily, "walle_usage_active",
                     "1 when the unit is active", "active")
        yield family(GaugeMetricFamily, "walle_usage_processes",
                     "processes in the instance's cgroup", "processes")
        totals = summary(self.sampler.node, 0, instances)["totals"]
        yield GaugeMetricFamily("walle_usage_node_instances",
                                "Walle instances known to systemd on this node",
                                value=totals["instances"])
        for name, key, doc in (
                ("walle_usage_node_cpu_seconds", "cpu_seconds", "sum over the instances"),
                ("walle_usage_node_memory_bytes", "memory_bytes", "sum over the instances")):
            if totals[key] is not None:
                kind = CounterMetricFamily if key == "cpu_seconds" else GaugeMetricFamily
                yield kind(name, doc, value=totals[key])


def make_registry(sampler: Sampler):
    from prometheus_client import CollectorRegistry, ProcessCollector
    registry = CollectorRegistry()
    registry.register(UsageCollector(sampler))
    ProcessCollector(registry=registry)  # the exporter's own CPU and RSS (its overhead)
    return registry


def serve(address: str, port: int, sampler: Sampler) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    registry = make_registry(sampler)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/summary":
                self._reply(json.dumps(sampler.summary()).encode(), "application/json")
            elif path == "/healthz":
                self._reply(b"ok\n", "text/plain")
            else:
                self.send_error(404, "try /metrics or /summary")

        def _reply(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    ThreadingHTTPServer.address_family = family
    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _bytes_or_none(text: str) -> int | None:
    """systemd's MemoryMax: bytes, or `infinity` (and absurd 2^64-1) meaning no limit."""
    value = _int(text)
    return value if value is not None and value < 2 ** 63 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="walle-exporter",
                                     description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--address", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=9851, help="port to listen on")
    parser.add_argument("--node", default=socket.gethostname(), help="node name in /summary")
    parser.add_argument("--min-interval", type=float, default=2.0,
                        help="seconds a sample is reused for")
    parser.add_argument("--once", action="store_true", help="print /summary once and exit")
    args = parser.parse_args(argv)
    sampler = Sampler(args.node, args.min_interval)
    if args.once:
        print(json.dumps(sampler.summary(), indent=2))
        return 0
    serve(args.address, args.port, sampler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
