"""Stand-in specific behaviour (skipped against a real Consul): per-node agent listeners,
persistence across restarts, and the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import requests

import consul
from walle.lab.consul_standin import start_in_thread

pytestmark = pytest.mark.consul
SECOND_AGENT = "walle-test-node2"


def test_agent_listener_acts_as_that_nodes_agent(standin, consul_client, unique):
    host, port = standin.agent_addrs[SECOND_AGENT]
    node_agent = consul.Consul(host=host, port=port)
    assert node_agent.agent.self()["Config"]["NodeName"] == SECOND_AGENT
    name = unique("on-node2")
    node_agent.agent.service.register(name, port=7000, check=consul.Check.ttl("60s"))
    try:
        _, rows = consul_client.catalog.service(name)
        assert [r["Node"] for r in rows] == [SECOND_AGENT]
        assert name not in consul_client.agent.services()  # not on the server's agent
        session = node_agent.session.create(name=unique("s"))
        assert consul_client.session.info(session)[1]["Node"] == SECOND_AGENT
        node_agent.session.destroy(session)
    finally:
        node_agent.agent.service.deregister(name)


def test_agent_node_address_can_differ_from_its_listener(standin):
    server = start_in_thread(dns=None, agents={"lab-n1": "127.0.0.1:0"},
                             node_addresses={"lab-n1": "10.77.0.11"})
    try:
        c = consul.Consul(*server.http_addr)
        assert c.catalog.node("lab-n1")[1]["Node"]["Address"] == "10.77.0.11"
    finally:
        server.stop()


def test_state_survives_a_restart(standin, tmp_path, unique):
    data = tmp_path / "data"
    first = start_in_thread(data_dir=data, dns=None, node_name="persist-node")
    try:
        c = consul.Consul(*first.http_addr)
        c.kv.put("cfg/a", "1", flags=3)
        session = c.session.create(name="keeper", ttl=60)
        assert c.kv.put("cfg/lock", "me", acquire=session)
        c.agent.service.register("svc", port=81, check=consul.Check.ttl("60s"))
        c.agent.check.ttl_pass("service:svc")
        index_before, _ = c.kv.get("cfg/", recurse=True)
    finally:
        first.stop()
    second = start_in_thread(data_dir=data, dns=None, node_name="persist-node")
    try:
        c = consul.Consul(*second.http_addr)
        index_after, entries = c.kv.get("cfg/", recurse=True)
        assert int(index_after) >= int(index_before)
        by_key = {e["Key"]: e for e in entries}
        assert by_key["cfg/a"]["Value"] == b"1" and by_key["cfg/a"]["Flags"] == 3
        assert by_key["cfg/lock"]["Session"] == session
        assert c.session.info(session)[1]["Name"] == "keeper"
        (inst,) = c.health.service("svc", passing=True)[1]
        assert inst["Service"]["Port"] == 81
        # the global index keeps growing after a restart
        c.kv.put("cfg/b", "2")
        assert c.kv.get("cfg/b")[1]["ModifyIndex"] > int(index_before)
    finally:
        second.stop()


def test_command_line_prints_ready_and_saves_on_sigterm(standin, tmp_path):
    data = tmp_path / "cli"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "walle.lab.consul_standin", "--data-dir", str(data),
         "--http", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--node-name", "cli-node"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # bounded: the process exits or prints within seconds
        assert line.startswith("ready "), proc.stderr.read() if proc.poll() is not None else line
        http = line.split("http=")[1].split()[0]
        assert requests.put(f"http://{http}/v1/kv/from-cli", data=b"v", timeout=5).json() is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stdout.close()
        proc.stderr.close()
    saved = json.loads((data / "snapshot.json").read_text())["state"]  # compacted at stop
    assert "from-cli" in [e["Key"] for e in saved["kv"]]


def test_bad_cli_argument_names_the_option(tmp_path):
    done = subprocess.run([sys.executable, "-m", "walle.lab.consul_standin", "--http", "nope"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and "--http" in done.stderr


def test_request_from_a_nodes_address_acts_as_that_nodes_agent(standin, consul_client, unique):
    import http.client

    node = unique("by-ip")
    consul_client.catalog.register(node, "127.0.0.5")
    try:
        host, port = standin.http_addr
        conn = http.client.HTTPConnection(host, port, timeout=5, source_address=("127.0.0.5", 0))
        try:
            conn.request("GET", "/v1/agent/self")
            assert json.loads(conn.getresponse().read())["Config"]["NodeName"] == node
        finally:
            conn.close()
    finally:
        consul_client.catalog.deregister(node)
