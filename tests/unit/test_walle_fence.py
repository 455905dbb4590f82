"""roles/node/files/walle-fence, the node's watchdog: when is a node cut off (Consul's answer
about its serfHealth, served here by a throwaway HTTP server), when does it fence, what does it
stop (only walle-<job>-<slot> units, timers first), and when does it re-arm. The lab test
tests/lab/test_fence_lab.py runs it on a real node behind a real partition."""

from __future__ import annotations

import http.server
import importlib.machinery
import importlib.util
import json
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "node" / "files" / "walle-fence"


def load_fence():
    loader = importlib.machinery.SourceFileLoader("walle_fence", str(SCRIPT))
    spec = importlib.util.spec_from_loader("walle_fence", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


wf = load_fence()


class FakeConsul:
    """/v1/health/node/<node> answering `checks` (a list, or raw bytes)."""

    def __init__(self):
        self.checks: object = []
        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.seen.append((self.path, self.headers.get("X-Consul-Token")))
                body = outer.checks if isinstance(outer.checks, bytes) else \
                    json.dumps(outer.checks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.addr = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def consul():
    fake = FakeConsul()
    yield fake
    fake.server.shutdown()


def serf(status: str) -> list[dict]:
    return [{"Node": "node1", "CheckID": "serfHealth", "Status": status},
            {"Node": "node1", "CheckID": "service:web-0", "Status": "passing"}]


def test_connected_only_when_consul_answers_with_the_nodes_serf_health_passing(consul,
                                                                                tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config = {"consul_addr": consul.addr, "node": "node1", "token_file": str(token),
              "timeout": 2.0}
    consul.checks = serf("passing")
    assert wf.connected(config) == (True, "")
    assert consul.seen[-1] == ("/v1/health/node/node1", "s3cret")
    consul.checks = serf("critical")  # an asymmetric partition: HTTP works, gossip lost it
    ok, why = wf.connected(config)
    assert not ok and "failed" in why and "critical" in why
    consul.checks = []  # left the catalog (agent stopped)
    ok, why = wf.connected(config)
    assert not ok and "no serfHealth" in why
    consul.checks = b"<html>proxy error</html>"
    assert wf.connected(config)[0] is False
    consul.checks = {"CheckID": "serfHealth", "Status": "passing"}  # not a list
    assert wf.connected(config)[0] is False


def test_unreachable_consul_is_cut_off():
    ok, why = wf.connected({"consul_addr": "http://127.0.0.1:9", "node": "node1",
                            "timeout": 1.0})
    assert not ok and "unreachable" in why


class Node:
    """The node's units and the clock, for Fence."""

    def __init__(self, units: list[str]):
        self.now = 0.0
        self.running = list(units)
        self.stops: list[list[str]] = []

    def list_units(self):
        return list(self.running)

    def stop(self, units):
        self.stops.append(list(units))
        self.running = [u for u in self.running if u not in units]
        return ""


def make_fence(node: Node, fence_after: float = 10):
    state = {"ok": True}

    def probe():
        return (state["ok"], "" if state["ok"] else "Consul unreachable: timed out")
    fence = wf.Fence(fence_after, probe, clock=lambda: node.now, list_units=node.list_units,
                     stop=node.stop)
    return fence, state


def test_it_fences_once_cut_off_for_the_fence_time_and_rearms_when_connected(capsys):
    node = Node(["walle-web-0.service", "walle-tick-0.timer"])
    fence, link = make_fence(node)
    node.now = 5
    assert fence.check() == []  # connected at 5
    link["ok"] = False
    for t in (6, 10, 14.9):
        node.now = t
        assert fence.check() == []
    assert node.stops == []
    node.now = 15  # 10 s after the last connected answer
    assert fence.check() == ["walle-web-0.service", "walle-tick-0.timer"]
    assert node.stops == [["walle-web-0.service", "walle-tick-0.timer"]]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "FENCED" in ln]
    assert len(lines) == 1 and "stopped 2 Walle unit(s)" in lines[0]
    assert lines[0].startswith("<3>")  # an error-priority journal line
    node.now = 16
    assert fence.check() == []  # nothing left to stop: no more lines
    assert "FENCED" not in capsys.readouterr().err
    node.running = ["walle-web-0.service"]  # something started it while still cut off
    node.now = 17
    assert fence.check() == ["walle-web-0.service"]
    link["ok"] = True
    node.now = 18
    assert fence.check() == []
    assert "connected to Consul again" in capsys.readouterr().err
    link["ok"] = False  # a new cut-off: a full fence time again, from the last answer
    node.running = ["walle-web-0.service"]
    node.now = 27.9
    assert fence.check() == []
    node.now = 28
    assert fence.check() == ["walle-web-0.service"]


def test_a_node_that_starts_cut_off_fences_after_the_fence_time():
    node = Node(["walle-web-0.service"])
    fence, link = make_fence(node)
    link["ok"] = False
    node.now = 9.9
    assert fence.check() == []
    node.now = 10
    assert fence.check() == ["walle-web-0.service"]


def test_only_running_walle_workload_units_are_stopped_timers_first(monkeypatch):
    listing = "\n".join([
        "walle-web-0.service loaded active running Walle web",
        "walle-my_app-12.service loaded activating start Walle my-app",
        "walle-tick-0.timer loaded active waiting Walle tick",
        "walle-tick-0.service loaded inactive dead Walle tick",
        "walle-old-1.service loaded failed failed Walle old",
        "walle-serf.service loaded active running Serf agent",
        "walle-exporter.service loaded active running exporter",
        "walle-fence.service loaded active running fence",
        "walle-web-x.service loaded active running not a slot",
        "walle.slice loaded active active Walle workloads",
        "walle-tock-1@20261202T101500-41.service loaded active running a run (allow)",
        "walle-tock-1@20261202T101505-77.service loaded activating auto-restart a retry",
        "walle-tock-1@x.timer loaded active waiting not a slot's",
    ])
    calls = []

    def run(argv, **kwargs):
        calls.append((argv, kwargs["timeout"]))
        return type("R", (), {"stdout": listing, "returncode": 0, "stderr": ""})()
    monkeypatch.setattr(wf.subprocess, "run", run)
    units = wf.running_workload_units()
    assert units == ["walle-tick-0.timer", "walle-my_app-12.service",
                     "walle-tock-1@20261202T101500-41.service",
                     "walle-tock-1@20261202T101505-77.service", "walle-web-0.service"]
    assert wf.stop_units(units) == ""
    assert calls[-1][0] == ["systemctl", "stop", "--", *units]
    assert all(timeout > 0 for _, timeout in calls)  # every call is bounded


def test_the_configuration_is_checked(tmp_path):
    path = tmp_path / "fence.json"
    path.write_text(json.dumps({"consul_addr": "http://10.77.0.1:8500", "node": "node1",
                                "fence_after": "10.0"}))
    config = wf.load_config(str(path))
    assert (config["fence_after"], config["interval"], config["timeout"]) == (10.0, 1.0, 2.0)
    for bad in ({"node": "node1"}, {"consul_addr": "http://x", "node": "n", "interval": 0},
                {"consul_addr": "http://x", "node": "n", "fence_after": "soon"}):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            wf.load_config(str(path))
