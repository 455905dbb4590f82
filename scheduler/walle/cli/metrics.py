"""`walle metrics`: the pool as Prometheus metrics (text exposition format 0.0.4, written by
prometheus_client).

Cluster state comes from one Consul snapshot; `--usage` adds what each instance really uses,
read from the `walle-exporter` of each node that runs instances (found in the Consul catalog,
its /summary endpoint; roles/exporter), one HTTP request per node, in parallel. Print once,
or `--listen HOST:PORT` to serve /metrics for a Prometheus scrape.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from walle.adapters.consul import LEADER_KEY
from walle.adapters.usage import Usage, read_node_usage
from walle.cli.common import add_consul_args, cluster_command, connect, print_json
from walle.cli.main import EXIT_OK, EXIT_USAGE
from walle.naming import instance_id
from walle.service.cluster import Snapshot, load_snapshot
from walle.service.records import SLOT_STATES

HELP = {
    "walle_node_up": ("gauge", "1 when the node's serfHealth passes"),
    "walle_node_schedulable": ("gauge", "1 when the node is ready (not draining or down)"),
    "walle_node_cpu_cores": ("gauge", "CPU cores the node offers"),
    "walle_node_memory_bytes": ("gauge", "memory the node offers"),
    "walle_node_reserved_cpu_cores": ("gauge", "guaranteed CPU of the live instances there"),
    "walle_node_reserved_memory_bytes": ("gauge", "guaranteed memory of the live instances"),
    "walle_node_instances": ("gauge", "live instances on the node"),
    "walle_job_desired_instances": ("gauge", "the job's count"),
    "walle_job_instances": ("gauge", "the job's instances by state (walle status's words)"),
    "walle_instance_healthy": ("gauge", "1 when every check of the instance passes"),
    "walle_instance_cpu_quota_percent": ("gauge", "granted CPUQuota (percent of one core)"),
    "walle_instance_cpu_weight": ("gauge", "granted CPUWeight"),
    "walle_instance_memory_max_bytes": ("gauge", "granted MemoryMax"),
    "walle_instance_cpu_seconds_total": ("counter", "CPU time used (walle-exporter)"),
    "walle_instance_memory_bytes": ("gauge", "memory in use (walle-exporter)"),
    "walle_scheduler_leader": ("gauge", "1 when a scheduler holds the leader lock"),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("metrics", help="the pool as Prometheus metrics")
    parser.add_argument("--usage", action="store_true",
                        help="add each instance's CPU and memory use, read from the "
                             "walle-exporter of its node")
    parser.add_argument("--listen", metavar="HOST:PORT", help="serve /metrics instead of "
                                                             "printing once")
    add_consul_args(parser)
    parser.set_defaults(func=cmd_metrics)


@cluster_command
def cmd_metrics(args) -> int:
    api, store = connect(args)

    def samples() -> dict[str, list[tuple[dict, float]]]:
        snap = load_snapshot(api, store)
        usage = read_usage(api, snap) if args.usage else {}
        return metric_samples(snap, usage, leader=has_leader(api))

    if not args.listen:
        if args.json:
            print_json({name: [{"labels": labels, "value": value} for labels, value in values]
                        for name, values in samples().items()})
        else:
            sys.stdout.write(exposition(samples()))
        return EXIT_OK
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        print(f"walle metrics: --listen {args.listen!r}: use HOST:PORT", file=sys.stderr)
        return EXIT_USAGE
    serve(host or "127.0.0.1", int(port), lambda: exposition(samples()))
    return EXIT_OK


def render_metrics(snap: Snapshot, usage: Mapping[tuple[str, str], Mapping[str, float]],
                   leader: bool | None = None) -> str:
    """The Prometheus text exposition of metric_samples()."""
    return exposition(metric_samples(snap, usage, leader))


def metric_samples(snap: Snapshot, usage: Mapping[tuple[str, str], Mapping[str, float]],
                   leader: bool | None = None) -> dict[str, list[tuple[dict, float]]]:
    """metric name -> (labels, value) samples. `usage`: (node, instance id) -> the exporter's
    measures (cpu_seconds, memory_bytes)."""
    samples: dict[str, list[tuple[dict, float]]] = {name: [] for name in HELP}
    if leader is not None:
        samples["walle_scheduler_leader"].append(({}, leader))
    for info in snap.health.nodes:
        node = snap.nodes.get(info.name)
        if node is None:
            continue
        live = [r.alloc for r in snap.records.values()
                if r.alloc.node == info.name and r.alloc.live]
        labels = {"node": info.name, "zone": info.zone or ""}
        samples["walle_node_up"].append((labels, info.health == "passing"))
        samples["walle_node_schedulable"].append((labels, node.state == "ready"))
        samples["walle_node_cpu_cores"].append((labels, info.cpu))
        samples["walle_node_memory_bytes"].append((labels, info.memory))
        samples["walle_node_reserved_cpu_cores"].append(
            (labels, sum(a.reserved.cpu for a in live)))
        samples["walle_node_reserved_memory_bytes"].append(
            (labels, sum(a.reserved.memory for a in live)))
        samples["walle_node_instances"].append((labels, len(live)))
    for name, spec in sorted(snap.jobs.items()):
        samples["walle_job_desired_instances"].append(({"job": name}, spec.count))
        states = [r.state for r in snap.records.values() if r.alloc.job == name]
        for state in SLOT_STATES:  # as `walle status` shows them: a lost one is not running
            samples["walle_job_instances"].append(
                ({"job": name, "state": state}, states.count(state)))
    for key, r in sorted(snap.records.items()):
        a = r.alloc
        labels = {"job": a.job, "slot": str(a.slot), "node": a.node}
        samples["walle_instance_healthy"].append(
            (labels, a.state == "running" and snap.instance_status(a.node, key)
             in (None, "passing")))
        if a.grant:
            samples["walle_instance_cpu_quota_percent"].append(
                (labels, a.grant.cpu_quota_percent))
            samples["walle_instance_cpu_weight"].append((labels, a.grant.cpu_weight))
            samples["walle_instance_memory_max_bytes"].append((labels, a.grant.memory_max))
        used = usage.get((a.node, instance_id(a.job, a.slot)), {})
        for field, name in (("cpu_seconds", "walle_instance_cpu_seconds_total"),
                            ("memory_bytes", "walle_instance_memory_bytes")):
            if isinstance(used.get(field), int | float):
                samples[name].append((labels, used[field]))
    return samples


def exposition(samples: Mapping[str, list[tuple[dict, float]]]) -> str:
    """The text exposition format 0.0.4, rendered by prometheus_client (not by hand)."""
    class Samples:
        def collect(self):
            for name, values in samples.items():
                kind, text = HELP[name]
                family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                family = family_type(name, text, labels=_label_names(values))
                for labels, value in values:
                    family.add_metric(list(labels.values()), float(value))
                yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Samples())
    return generate_latest(registry).decode()


def _label_names(values: list[tuple[dict, float]]) -> list[str]:
    """One family's label names: every sample of a family carries the same labels."""
    return list(values[0][0]) if values else []


def has_leader(api) -> bool:
    """Whether a scheduler holds the leader lock (the key is held by a live session)."""
    _, entry = api.call("leader key", lambda: api.client.kv.get(LEADER_KEY))
    return bool(entry and entry.get("Session"))


def read_usage(api, snap: Snapshot) -> Usage:
    """(node, instance id) -> measures, from the exporter of every node that runs live
    instances (adapters/usage.py)."""
    return read_node_usage(api, {r.alloc.node for r in snap.records.values() if r.alloc.live})


def serve(host: str, port: int, scrape) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "try /metrics")
                return
            body = scrape().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    print(f"serving http://{host}:{port}/metrics", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
