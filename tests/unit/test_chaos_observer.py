"""bench/chaos.py's readings of the nodes and of Consul: what counts as a running instance."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys

from walle.adapters.runner import REPO_ROOT


def _chaos():
    spec = importlib.util.spec_from_file_location("walle_bench_chaos",
                                                  REPO_ROOT / "bench" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


chaos = _chaos()


def test_units_map_back_to_job_names_and_only_running_ones_count():
    listing = "\n".join([
        "walle-chaos_web-0.service loaded active running walle chaos-web slot 0",
        "walle-chaos_web-1.service loaded inactive dead walle chaos-web slot 1",
        "walle-chaos_b3-1.service loaded deactivating stop-sigterm walle chaos-b3 slot 1",
        "walle-chaos_tick-0.timer loaded active waiting walle chaos-tick slot 0",
        "walle-chaos_tick-0.service loaded inactive dead walle chaos-tick slot 0",
        "walle-other-2.timer loaded active waiting not a cron job of ours",
        "walle-serf.service loaded active running Walle lab Serf agent",
        "walle-sshd-keygen.service loaded inactive dead Generate SSH host keys",
    ])
    assert chaos.parse_units(listing, {"chaos-tick"}) == {
        ("chaos-web", 0), ("chaos-b3", 1), ("chaos-tick", 0)}


def test_an_instance_passes_only_where_every_check_passes():
    checks = [
        {"Node": "node1", "CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
        {"Node": "node2", "CheckID": "serfHealth", "Status": "critical", "ServiceID": ""},
        {"Node": "node1", "CheckID": "service:web-0", "Status": "passing", "ServiceID": "web-0"},
        {"Node": "node2", "CheckID": "service:web-0", "Status": "passing", "ServiceID": "web-0"},
        {"Node": "node2", "CheckID": "x", "Status": "critical", "ServiceID": "web-0"},
        # a partitioned node: its last service status stays passing, its serfHealth fails
        {"Node": "node3", "CheckID": "serfHealth", "Status": "critical", "ServiceID": ""},
        {"Node": "node3", "CheckID": "service:web-1", "Status": "passing", "ServiceID": "web-1"},
        {"Node": "node1", "CheckID": "service:web-1", "Status": "passing", "ServiceID": "web-1"},
        # node-level services on every node are not a slot's instances
        {"Node": "node1", "CheckID": "service:walle-exporter", "Status": "passing",
         "ServiceID": "walle-exporter"},
        {"Node": "node2", "CheckID": "service:walle-exporter", "Status": "passing",
         "ServiceID": "walle-exporter"},
    ]
    passing, serf = chaos.parse_checks(checks)
    assert passing == {"web-0": {"node1"}, "web-1": {"node1"}}
    assert serf == {"node1": "passing", "node2": "critical", "node3": "critical"}


def test_slot_records_name_their_node_state_and_previous_node():
    def entry(key, body):
        return {"Key": key, "Value": base64.b64encode(json.dumps(body).encode()).decode()}

    records = chaos.parse_records([
        entry("walle/allocs/web/0", {"node": "node1", "state": "running",
                                     "previous": {"node": "node3"}}),
        entry("walle/allocs/web/1", {"node": "node2", "state": "pending", "previous": None}),
        entry("walle/allocs/web/abc", {"node": "node2"}),  # malformed: skipped
        {"Key": "walle/allocs/web/2", "Value": base64.b64encode(b"not json").decode()},
    ])
    assert records == {("web", 0): chaos.Record("node1", "running", "node3"),
                       ("web", 1): chaos.Record("node2", "pending", None)}
