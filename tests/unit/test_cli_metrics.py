"""Prometheus exposition of the pool: built from one snapshot, parsed back here."""

import re

from prometheus_client.parser import text_string_to_metric_families

from walle.adapters.consul import NodeInfo
from walle.adapters.consul.health import ClusterHealth
from walle.cli.metrics import render_metrics
from walle.core import Allocation, Capacity, Grant
from walle.jobspec import parse_spec
from walle.service.cluster import Snapshot, core_node
from walle.service.records import SlotRecord

GIB = 1024 ** 3
LABEL = re.compile(r'\w+="[^"]*"')


def snapshot() -> Snapshot:
    infos = [NodeInfo("n1", "10.77.9.11", cpu=4, memory=8 * GIB, zone="z1", health="passing",
                      schedulable=True),
             NodeInfo("n2", "10.77.9.12", cpu=4, memory=8 * GIB, zone="z2",
                      health="critical", schedulable=True)]
    spec = parse_spec({"name": "web", "kind": "service", "count": 2,
                       "resources": {"cpu": "0.5-1", "memory": "1G"},
                       "runtime": {"command": "/bin/true"}, "service": {"port": 80}})
    grant = Grant(cpu_weight=50, cpu_quota_percent=100, memory_min=GIB, memory_high=GIB,
                  memory_max=GIB)
    records = {
        f"web-{slot}": SlotRecord(Allocation(
            "web", slot, node, Capacity(0.5, GIB), Capacity(1, GIB), "d", "r",
            state=state, grant=grant))
        for slot, node, state in ((0, "n1", "running"), (1, "n2", "pending"))
    }
    health = ClusterHealth(7, infos, {("n1", "web-0"): "passing", ("n2", "web-1"): "critical"})
    return Snapshot({"web": spec}, {}, records, {i.name: core_node(i, False) for i in infos},
                    {i.name: i.address for i in infos}, health)


class Samples(dict):
    """(name, 'k="v",...') -> value; label order does not matter (the exposition sorts them)."""

    @staticmethod
    def _key(key):
        name, labels = key
        return name, None if labels is None else ",".join(sorted(LABEL.findall(labels)))

    def __getitem__(self, key):
        return super().__getitem__(self._key(key))

    def __contains__(self, key):
        return super().__contains__(self._key(key))


def parse(text: str) -> Samples:
    """The samples of an exposition, read back by prometheus_client's own parser."""
    out = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items()) or None
            dict.__setitem__(out, Samples._key((sample.name, labels)), sample.value)
    return out


def test_nodes_jobs_and_instances_are_exported_with_their_values():
    usage = {("n1", "web-0"): {"cpu_seconds": 2.5, "memory_bytes": 1048576}}
    m = parse(render_metrics(snapshot(), usage))
    assert m[("walle_node_up", 'node="n1",zone="z1"')] == 1
    assert m[("walle_node_up", 'node="n2",zone="z2"')] == 0
    assert m[("walle_node_reserved_cpu_cores", 'node="n1",zone="z1"')] == 0.5
    assert m[("walle_node_memory_bytes", 'node="n1",zone="z1"')] == 8 * GIB
    assert m[("walle_job_desired_instances", 'job="web"')] == 2
    assert m[("walle_job_instances", 'job="web",state="running"')] == 1
    assert m[("walle_instance_healthy", 'job="web",slot="0",node="n1"')] == 1
    assert m[("walle_instance_healthy", 'job="web",slot="1",node="n2"')] == 0
    assert m[("walle_instance_cpu_seconds_total", 'job="web",slot="0",node="n1"')] == 2.5
    assert m[("walle_instance_memory_bytes", 'job="web",slot="0",node="n1"')] == 1048576
    assert ("walle_instance_memory_bytes", 'job="web",slot="1",node="n2"') not in m


def test_every_metric_has_help_and_type_once():
    text = render_metrics(snapshot(), {})
    helps = re.findall(r"^# HELP (\w+)", text, re.MULTILINE)
    types = re.findall(r"^# TYPE (\w+) (gauge|counter)$", text, re.MULTILINE)
    assert len(helps) == len(set(helps)) == len(types)


def test_the_leader_gauge_says_whether_a_scheduler_leads():
    key = ("walle_scheduler_leader", None)
    assert parse(render_metrics(snapshot(), {}, leader=True))[key] == 1
    assert parse(render_metrics(snapshot(), {}, leader=False))[key] == 0
    assert ("walle_scheduler_leader", None) not in parse(render_metrics(snapshot(), {}))


class _Health:
    def __init__(self, entries):
        self.entries = entries

    def service(self, name, passing, index, wait):
        assert name == "walle-exporter"
        return 3, self.entries


class _Api:
    def __init__(self, entries):
        self.client = type("Client", (), {"health": _Health(entries)})()

    def call(self, what, fn):
        return fn()


def _exporter_entry(node: str, port: int) -> dict:
    return {"Node": {"Node": node, "Address": "127.0.0.1"},
            "Service": {"ID": "walle-exporter", "Service": "walle-exporter", "Port": port,
                        "Address": "127.0.0.1"}, "Checks": []}


def test_usage_comes_from_the_exporters_summaries_found_in_consul():
    """--usage reads /summary of the exporter of each node with live instances: n1's answers
    (real HTTP), n2's exporter is not listening; only n1's instance gets usage."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from walle.cli.metrics import read_usage

    summary = {"node": "n1", "time": 1.0, "instances": {
        "web-0": {"job": "web", "slot": 0, "cpu_seconds": 7.25, "memory_bytes": 2048}}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps(summary).encode()
            self.send_response(200 if self.path == "/summary" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    dead_port = closed.server_address[1]
    closed.server_close()
    try:
        snap = snapshot()
        snap.records["web-1"] = SlotRecord(Allocation(
            "web", 1, "n2", Capacity(0.5, GIB), Capacity(1, GIB), "d", "r", state="running"))
        api = _Api([_exporter_entry("n1", server.server_address[1]),
                    _exporter_entry("n2", dead_port)])
        usage = read_usage(api, snap)
    finally:
        server.shutdown()
        server.server_close()
    assert usage == {("n1", "web-0"): summary["instances"]["web-0"]}
    m = parse(render_metrics(snap, usage))
    assert m[("walle_instance_cpu_seconds_total", 'job="web",slot="0",node="n1"')] == 7.25
    assert ("walle_instance_cpu_seconds_total", 'job="web",slot="1",node="n2"') not in m


def test_job_instances_count_states_as_walle_status_shows_them():
    snap = snapshot()
    lost = snap.records["web-1"]
    snap.records["web-1"] = SlotRecord(lost.alloc, status="lost", reason="node n2 down")
    m = parse(render_metrics(snap, {}))
    assert m[("walle_job_instances", 'job="web",state="lost"')] == 1
    assert m[("walle_job_instances", 'job="web",state="pending"')] == 0
    assert m[("walle_job_instances", 'job="web",state="complete"')] == 0
