"""Monitoring in the lab: site.yml puts walle-exporter and the node exporter on every node and
Prometheus (roles/monitoring) on node1; a job runs; the exporter of its node reports the
instance's memory and CPU; `walle metrics --usage` reads it from there; Prometheus discovers
every target through the Consul catalog, scrapes them up and has Walle's rules loaded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.adapters.consul.services import service_health
from walle.adapters.runner import REPO_ROOT, ansible_env
from walle.cli.demo import start_schedulers, submit
from walle.cli.metrics import read_usage
from walle.jobspec import parse_spec
from walle.lab.nodes import Lab
from walle.service.cluster import load_snapshot

pytestmark = pytest.mark.lab

HOG_MIB = 32
EXPORTER_PORT, PROMETHEUS_PORT, METRICS_PORT = 9851, 9090, 9871


def hog_spec():
    """One instance holding HOG_MIB of written memory behind an HTTP check."""
    program = (f"import http.server as h; b = b'x' * ({HOG_MIB} << 20); "
               "h.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()")
    return parse_spec({
        "name": "hog", "kind": "service", "count": 1,
        "resources": {"cpu": "0.05-0.5", "memory": "96M-128M"},
        "runtime": {"command": "/usr/bin/python3", "args": ["-c", program],
                    "user": "nobody", "working_dir": "/tmp"},
        "health": {"type": "http", "path": "/", "port": 8080, "interval": "1s",
                   "timeout": "1s"},
        "service": {"port": 8080},
    })


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - lab address
        return json.load(reply)


def wait_for(what: str, probe, timeout: float):
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError, KeyError) as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last error: {last!r})")


def site_yml(lab: Lab) -> subprocess.CompletedProcess:
    env = {**os.environ, **ansible_env(), "WALLE_LAB": lab.name}
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab.inventory_path),
         "-i", str(lab.dir / "monitoring.yml"), str(REPO_ROOT / "site.yml")],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def pool():
    lab = Lab(f"m{os.getpid()}", progress=lambda msg: None)
    try:
        lab.up(3)
        addr = lab.start_consul()
        # node1 also runs Prometheus: an inventory of its own adds it to `monitoring`
        extra = lab.dir / "monitoring.yml"
        extra.write_text(yaml.safe_dump({"monitoring": {
            "hosts": {"node1": None},
            "vars": {"walle_monitoring_scrape_interval": "5s",
                     "walle_monitoring_evaluation_interval": "5s",
                     "walle_monitoring_sd_refresh": "5s"}}}))
        proc = site_yml(lab)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        start_schedulers(lab, addr)
        host = lab.state.host_address
        # the schedulers' view for Prometheus: `walle metrics --listen`, registered in the
        # catalog as walle-metrics (on the lab's server node)
        lab.start_process("walle-metrics", [
            str(Path(sys.executable).parent / "walle"), "metrics", "--consul-addr", addr,
            "--listen", f"{host}:{METRICS_PORT}"], "walle-metrics.log")
        api = ConsulApi(ConsulConfig.from_env(addr=addr))
        api.client.catalog.register(
            f"walle-server-{lab.name}", host,
            service={"Service": "walle-metrics", "ID": "walle-metrics", "Port": METRICS_PORT,
                     "Address": host})
        yield lab, api, StateStore(api)
    finally:
        lab.down()


def test_exporter_reports_the_instance_and_prometheus_scrapes_every_target(pool):
    lab, api, store = pool
    addresses = {n.name: n.address for n in lab.nodes}
    submit(store, hog_spec())

    def running():
        recs = [r for r in load_snapshot(api, store).records.values() if r.alloc.job == "hog"]
        return recs[0] if len(recs) == 1 and recs[0].alloc.state == "running" else None
    record = wait_for("hog running", running, 180)
    node = record.alloc.node

    # the exporter of the instance's node measures it: written memory, CPU, its limit
    def measured():
        doc = get_json(f"http://{addresses[node]}:{EXPORTER_PORT}/summary")
        inst = doc["instances"].get("hog-0", {})
        return doc if inst.get("memory_bytes", 0) >= HOG_MIB << 20 else None
    summary = wait_for("the exporter sees the hog's memory", measured, 60)
    inst = summary["instances"]["hog-0"]
    assert summary["node"] == node and inst["active"] is True
    assert inst["cpu_seconds"] > 0 and inst["processes"] >= 1
    assert inst["memory_max_bytes"] == record.alloc.grant.memory_max
    assert set(inst["sources"]) >= {"cpu", "memory"}
    assert summary["totals"]["instances"] == 1

    # both exporters of every node are in the catalog, and `walle metrics --usage` reads there
    _, exporters = service_health(api, "walle-exporter", passing=False)
    assert sorted(e.node for e in exporters) == sorted(addresses)
    _, node_exporters = service_health(api, "node-exporter", passing=False)
    assert sorted(e.node for e in node_exporters) == sorted(addresses)
    usage = read_usage(api, load_snapshot(api, store))
    assert usage[(node, "hog-0")]["memory_bytes"] >= HOG_MIB << 20

    # Prometheus on node1 found every target through the catalog and scrapes them up
    prometheus = f"http://{addresses['node1']}:{PROMETHEUS_PORT}"

    def all_up():
        targets = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        up = {(t["labels"]["job"], t["labels"].get("node", "")) for t in targets
              if t["health"] == "up"}
        want = {("node", n) for n in addresses} | {("walle-exporter", n) for n in addresses}
        return up if want <= up and any(job == "walle" for job, _ in up) else None
    wait_for("every target up in Prometheus", all_up, 120)

    def scraped_hog():
        query = urllib.parse.quote('walle_usage_memory_bytes{job="hog"}')
        result = get_json(f"{prometheus}/api/v1/query?query={query}")["data"]["result"]
        return result if result and float(result[0]["value"][1]) >= HOG_MIB << 20 else None
    hog = wait_for("the hog's memory in Prometheus", scraped_hog, 60)
    assert hog[0]["metric"]["node"] == node

    rules = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
    names = {r["name"] for g in rules for r in g["rules"]}
    assert {"WalleNodeDown", "WalleJobUnderCount", "WalleInstanceRestarting",
            "WalleInstanceMemoryNearMax", "WalleNoSchedulerLeader"} <= names

    def leader_seen():
        result = get_json(f"{prometheus}/api/v1/query?query=walle_scheduler_leader")
        return [float(r["value"][1]) for r in result["data"]["result"]] == [1.0]
    wait_for("a scheduler leader seen by Prometheus", leader_seen, 60)


def test_a_second_run_with_monitoring_changes_nothing(pool):
    lab, _, _ = pool
    proc = site_yml(lab)
    assert proc.returncode == 0, proc.stdout[-3000:]
    recap = re.findall(r"^(node\d+)\s+: ok=\d+\s+changed=(\d+)", proc.stdout, re.MULTILINE)
    assert sorted(recap) == [("node1", "0"), ("node2", "0"), ("node3", "0")], proc.stdout[-3000:]
