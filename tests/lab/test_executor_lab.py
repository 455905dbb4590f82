"""The executor against real systemd nodes: place.yml / stop.yml through walle.adapters.runner.

Consul registration is skipped (`walle_register: false`): these tests check units, slices,
the stop hook and host isolation; registration is the consul-marked tests' business.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import urllib.request

import pytest

from walle.adapters.runner import run_playbook
from walle.core.model import Grant
from walle.jobspec.model import (
    Discovery,
    HealthCheck,
    JobSpec,
    Range,
    Resources,
    Runtime,
    StopPolicy,
)
from walle.lab.consul_standin.server import start_in_thread
from walle.service.params import instance_vars, slice_args, stop_vars

pytestmark = pytest.mark.lab
MIB = 1024**2
NO_CONSUL = {"walle_register": False}


def web_spec(name: str = "web", count: int = 3, command: str = "/usr/bin/python3") -> JobSpec:
    # The hook runs in the instance's sandbox: its private /tmp and /var/tmp go with the unit,
    # its StateDirectory (/var/lib/walle-<job>-<slot>) stays for the test to read.
    marker = f"$STATE_DIRECTORY/prestop-{name}"
    return JobSpec(
        name=name,
        kind="service",
        count=count,
        resources=Resources(cpu=Range(0.25, 0.5), memory=Range(32 * MIB, 128 * MIB),
                            tasks_max=32),
        runtime=Runtime(kind="exec", command=command,
                        args=("-m", "http.server", "--bind", "0.0.0.0", "8080")),
        service=Discovery(name=name, port=8080),
        stop=StopPolicy(timeout=5.0, pre_stop=("/bin/sh", "-c", f"touch {marker}-$WALLE_SLOT")),
        restart="always",
    )


GRANT = Grant(cpu_weight=25, cpu_quota_percent=50, memory_min=32 * MIB,
              memory_high=96 * MIB, memory_max=128 * MIB)


def place_batch(lab, spec: JobSpec, slots_by_node: dict[str, list[int]]) -> dict:
    address = {n.name: n.address for n in lab.nodes}
    consul = f"http://{lab.host_address}:8500"
    return {node: [{**instance_vars(spec, s, address[node], GRANT, consul),
                    "manifest": {"job": spec.name, "slot": s, "spec_digest": spec.digest()}}
                   for s in slots]
            for node, slots in slots_by_node.items()}


def stop_batch(job: str, slots_by_node: dict[str, list[int]]) -> dict:
    return {node: [stop_vars(job, s) for s in slots] for node, slots in slots_by_node.items()}


def run(lab, playbook: str, batch: dict, **kw):
    return run_playbook(playbook, str(lab.inventory_path), {"walle_batch": batch, **NO_CONSUL},
                        sorted(batch), timeout=120, **kw)


def on_node(lab, node: str, command: str) -> str:
    out = subprocess.run(
        [".venv/bin/ansible", "-i", str(lab.inventory_path), node, "-o", "-m", "shell",
         "-a", command], capture_output=True, text=True, timeout=60, check=False)
    return out.stdout


def unit_props(lab, node: str, unit: str, *props: str) -> dict[str, str]:
    out = on_node(lab, node, f"systemctl show {unit} -p {','.join(props)} | tr '\\n' ' '")
    text = out.split("(stdout)", 1)[-1]
    return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)


def test_place_two_instances_on_two_nodes_then_stop_them_gracefully(lab):
    spec = web_spec()
    layout = {"node1": [0], "node2": [1]}
    finished: list[str] = []
    result = run(lab, "place.yml", place_batch(lab, spec, layout),
                 on_host_done=lambda host, r: finished.append(host))
    assert result.ok_hosts == ["node1", "node2"], (result.hosts, result.output_tail)
    assert sorted(finished) == ["node1", "node2"]
    assert all(not r.failed_instances for r in result.hosts.values()), result.hosts
    for node, (slot,) in layout.items():
        props = unit_props(lab, node, f"walle-web-{slot}.service", "ActiveState", "Slice")
        assert props == {"ActiveState": "active", "Slice": f"walle-web-{slot}.slice"}
        slice_props = unit_props(lab, node, f"walle-web-{slot}.slice", "CPUWeight", "MemoryMax")
        assert slice_props == {"CPUWeight": "25", "MemoryMax": str(128 * MIB)}
        # the manifest disaster recovery reads: on the node, readable by root only
        manifest = on_node(lab, node, f"stat -c %a /var/lib/walle/instances/web-{slot}.json"
                           f" && cat /var/lib/walle/instances/web-{slot}.json")
        assert "600" in manifest and f'"slot": {slot}' in manifest, manifest

    result = run(lab, "stop.yml", stop_batch("web", layout))
    assert result.ok_hosts == ["node1", "node2"], (result.hosts, result.output_tail)
    for node, (slot,) in layout.items():
        assert f"prestop-web-{slot}" in on_node(lab, node, f"ls /var/lib/walle-web-{slot}/")
        assert f"web-{slot}.json" not in on_node(lab, node, "ls /var/lib/walle/instances")
        props = unit_props(lab, node, f"walle-web-{slot}.service", "LoadState", "ActiveState")
        assert props == {"LoadState": "not-found", "ActiveState": "inactive"}


def test_a_broken_instance_fails_alone_and_is_removed(lab):
    good, broken = web_spec("good", count=1), web_spec("bad", count=1, command="/no/such/bin")
    batch = {"node1": place_batch(lab, broken, {"node1": [0]})["node1"]
             + place_batch(lab, good, {"node1": [0]})["node1"]}
    try:
        result = run(lab, "place.yml", batch)
        host = result.hosts["node1"]
        assert host.ok, (result.hosts, result.output_tail)
        assert list(host.failed_instances) == ["bad-0"]
        assert unit_props(lab, "node1", "walle-good-0.service", "ActiveState") == {
            "ActiveState": "active"}
        assert unit_props(lab, "node1", "walle-bad-0.service", "LoadState") == {
            "LoadState": "not-found"}
    finally:
        run(lab, "stop.yml", {"node1": [stop_vars("good", 0), stop_vars("bad", 0)]})


def test_runner_overhead_place_three_nodes(lab, capsys):
    """Not a pass/fail benchmark: prints the wall time of one batch run (cold and warm)."""
    spec = web_spec("ovh")
    layout = {"node1": [0], "node2": [1], "node3": [2]}
    batch = place_batch(lab, spec, layout)
    try:
        timings = []
        for attempt in ("first", "idempotent rerun"):
            started = time.monotonic()
            result = run(lab, "place.yml", batch)
            timings.append((attempt, time.monotonic() - started, result.duration))
            assert result.ok_hosts == ["node1", "node2", "node3"], result.hosts
        assert not any(r.changed for r in result.hosts.values())  # second run changes nothing
        started = time.monotonic()
        stopped = run(lab, "stop.yml", stop_batch("ovh", layout))
        timings.append(("stop", time.monotonic() - started, stopped.duration))
        assert stopped.ok_hosts == ["node1", "node2", "node3"]
    finally:
        run(lab, "stop.yml", stop_batch("ovh", layout))
    with capsys.disabled():
        for what, wall, inner in timings:
            print(f"\n[executor overhead] place.yml 3 nodes x 1 instance, {what}: "
                  f"{wall:.2f} s wall ({inner:.2f} s in run_playbook)")


def test_grants_apply_live_without_restarting_the_workload(lab):
    spec = web_spec("grt", count=1)
    assert run(lab, "place.yml", place_batch(lab, spec, {"node2": [0]})).ok_hosts == ["node2"]
    try:
        pid = unit_props(lab, "node2", "walle-grt-0.service", "MainPID")["MainPID"]
        bigger = dataclasses.replace(GRANT, cpu_weight=60, memory_high=112 * MIB)
        grants = {"node2": [{"instance": {"id": "grt-0"}, "slice": slice_args(spec, 0, bigger)}]}
        result = run(lab, "grants.yml", grants)
        assert result.ok_hosts == ["node2"] and result.hosts["node2"].changed, result.hosts
        assert unit_props(lab, "node2", "walle-grt-0.slice", "CPUWeight", "MemoryHigh") == {
            "CPUWeight": "60", "MemoryHigh": str(112 * MIB)}
        assert unit_props(lab, "node2", "walle-grt-0.service", "MainPID") == {"MainPID": pid}
    finally:
        run(lab, "stop.yml", stop_batch("grt", {"node2": [0]}))


def migrate(lab, place: dict, stop: dict):
    hosts = sorted(set(place) | set(stop))
    extravars = {"walle_place": place, "walle_stop": stop, **NO_CONSUL}
    return run_playbook("migrate.yml", str(lab.inventory_path), extravars,
                        [*hosts, "localhost"], timeout=120)


def test_migrate_starts_the_new_instance_before_stopping_the_old(lab):
    spec = web_spec("mig", count=2)
    old = {"node1": [0], "node2": [1]}
    assert run(lab, "place.yml", place_batch(lab, spec, old)).ok_hosts == ["node1", "node2"]
    broken = web_spec("mig", count=2, command="/no/such/bin")
    new = {"node3": place_batch(lab, spec, {"node3": [0]})["node3"]
           + place_batch(lab, broken, {"node3": [1]})["node3"]}
    try:
        result = migrate(lab, new, stop_batch("mig", old))
        assert all(result.hosts[n].ok for n in ("node1", "node2", "node3")), result.hosts
        assert list(result.hosts["node3"].failed_instances) == ["mig-1"]
        assert result.hosts["node1"].failed_instances == {}
        kept = result.hosts["node2"].failed_instances
        assert list(kept) == ["mig-1"] and kept["mig-1"].startswith("kept:")
        assert unit_props(lab, "node3", "walle-mig-0.service", "ActiveState") == {
            "ActiveState": "active"}
        assert unit_props(lab, "node1", "walle-mig-0.service", "LoadState") == {
            "LoadState": "not-found"}
        assert "prestop-mig-0" in on_node(lab, "node1", "ls /var/lib/walle-mig-0/")
        # its replacement failed: the old instance keeps serving
        assert unit_props(lab, "node2", "walle-mig-1.service", "ActiveState") == {
            "ActiveState": "active"}
    finally:
        run(lab, "stop.yml", stop_batch("mig", {"node2": [1], "node3": [0, 1]}))


@pytest.fixture
def standin(lab):
    """The Consul stand-in with one agent endpoint per node, as a node's local agent."""
    server = start_in_thread(http=(lab.host_address, 0), dns=None,
                             agents={n.name: (lab.host_address, 0) for n in lab.nodes})
    try:
        yield server
    finally:
        server.stop()


def agent_url(standin, node: str) -> str:
    host, port = standin.agent_addrs[node]
    return f"http://{host}:{port}"


def passing_nodes(standin, service: str) -> list[str]:
    host, port = standin.http_addr
    url = f"http://{host}:{port}/v1/health/service/{service}?passing=1"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return sorted(e["Node"]["Node"] for e in json.load(resp))


def wait_passing(standin, service: str, nodes: list[str], timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    seen = passing_nodes(standin, service)
    while seen != nodes and time.monotonic() < deadline:
        time.sleep(0.25)
        seen = passing_nodes(standin, service)
    return seen


@pytest.mark.consul
def test_registered_instances_pass_in_consul_and_migrate_gates_on_them(lab, standin):
    spec = dataclasses.replace(web_spec("reg", count=1),
                               health=HealthCheck(type="http", path="/", interval=0.5))
    address = {n.name: n.address for n in lab.nodes}

    def placed(node):
        return [instance_vars(spec, 0, address[node], GRANT, agent_url(standin, node))]

    def stopped(node):
        return [stop_vars("reg", 0, agent_url(standin, node))]

    inventory = str(lab.inventory_path)
    try:
        result = run_playbook("place.yml", inventory, {"walle_batch": {"node1": placed("node1")}},
                              ["node1"], timeout=120)
        assert result.ok_hosts == ["node1"], (result.hosts, result.output_tail)
        assert wait_passing(standin, "reg", ["node1"]) == ["node1"]

        host, port = standin.http_addr
        result = run_playbook(
            "migrate.yml", inventory,
            {"walle_place": {"node2": placed("node2")}, "walle_stop": {"node1": stopped("node1")},
             "walle_consul_addr": f"http://{host}:{port}", "walle_health_timeout_s": 20},
            ["node1", "node2", "localhost"], timeout=120)
        assert result.hosts["node1"].ok and result.hosts["node2"].ok, result.hosts
        assert result.hosts["node1"].failed_instances == {}  # the replacement passed
        assert passing_nodes(standin, "reg") == ["node2"]
        assert unit_props(lab, "node1", "walle-reg-0.service", "LoadState") == {
            "LoadState": "not-found"}
    finally:
        run_playbook("stop.yml", inventory,
                     {"walle_batch": {"node1": stopped("node1"), "node2": stopped("node2")}},
                     ["node1", "node2"], timeout=120)
    assert passing_nodes(standin, "reg") == []


def test_an_unreachable_host_fails_alone(lab):
    spec = web_spec("iso")
    layout = {"node1": [0], "node3": [1]}
    lab.kill_node("node3")
    try:
        finished: list[str] = []
        result = run(lab, "place.yml", place_batch(lab, spec, layout),
                     on_host_done=lambda host, r: finished.append(host))
        assert result.ok_hosts == ["node1"], (result.hosts, result.output_tail)
        assert result.hosts["node3"].unreachable and not result.hosts["node3"].ok
        assert sorted(finished) == ["node1", "node3"]
        assert unit_props(lab, "node1", "walle-iso-0.service", "ActiveState") == {
            "ActiveState": "active"}
    finally:
        run(lab, "stop.yml", stop_batch("iso", {"node1": [0]}))
        lab.restart_node("node3")
