"""Membership from real Serf agents (stand-in specific: a real Consul runs its own gossip).

Consul servers turn LAN gossip into the serfHealth check: a failed member's serfHealth turns
critical and the sessions bound to it are invalidated (api-docs/session.mdx, docs
architecture/gossip); a member that leaves is deregistered. Detection time is Serf's own
(memberlist LAN defaults: a few seconds in a small cluster)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import time

import pytest

import consul
from walle.lab.consul_standin import start_in_thread

pytestmark = [pytest.mark.consul,
              pytest.mark.skipif(shutil.which("serf") is None, reason="needs the serf binary")]


def _free_gossip_port(ips: list[str]) -> int:
    """A port free for TCP and UDP on every given loopback IP (bounded tries)."""
    for _ in range(50):
        port = random.randint(20000, 60000)
        try:
            for ip in ips:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((ip, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free gossip port")


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _members(rpc: str) -> dict[str, str]:
    done = subprocess.run(["serf", "members", "-format=json", f"-rpc-addr={rpc}"],
                          capture_output=True, text=True, timeout=5, check=False)
    if done.returncode != 0:
        return {}
    return {m["name"]: m["status"] for m in json.loads(done.stdout)["members"]}


def _poll(predicate, timeout_s: float, step_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


@pytest.fixture
def serf_cluster(tmp_path, unique):
    """Three serf agents on 127.0.0.2-4: [(name, rpc_addr, Popen)]."""
    ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = _free_gossip_port(ips)
    agents = []
    try:
        for i, ip in enumerate(ips, start=1):
            name, rpc = unique(f"serf{i}"), f"127.0.0.1:{_free_tcp_port()}"
            cmd = ["serf", "agent", f"-node={name}", f"-bind={ip}:{port}", f"-rpc-addr={rpc}",
                   "-log-level=warn", f"-tag=walle_cpu={i}"]
            if i > 1:  # retry: under load the first agent may not listen yet
                cmd += [f"-retry-join={ips[0]}:{port}", "-retry-interval=1s"]
            log = open(tmp_path / f"serf{i}.log", "w")  # noqa: SIM115 - closed below
            agents.append((name, rpc, subprocess.Popen(cmd, stdout=log, stderr=log), log))
        names = [a[0] for a in agents]
        _poll(lambda: all(_members(agents[0][1]).get(n) == "alive" for n in names), 20)
        yield [(n, r, p) for n, r, p, _ in agents]
    finally:
        for _, _, proc, log in agents:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            log.close()


def test_killed_member_turns_serf_health_critical_and_leaver_is_removed(standin, serf_cluster):
    (n1, rpc1, _), (n2, _, p2), (n3, _, p3) = serf_cluster
    server = start_in_thread(dns=None, node_name=n1, serf_rpc=rpc1)
    try:
        c = consul.Consul(*server.http_addr)

        def serf_health(node):
            checks = {ch["CheckID"]: ch for ch in c.health.node(node)[1]}
            return checks.get("serfHealth", {}).get("Status")

        _poll(lambda: all(serf_health(n) == "passing" for n in (n1, n2, n3)), 10)
        node3 = c.catalog.node(n3)[1]["Node"]
        assert node3["Address"] == "127.0.0.4" and node3["Meta"]["walle_cpu"] == "3"
        session = c.session.create(name="bound-to-n3", node=n3, lock_delay=0)
        assert c.kv.put("serf-test/lock", "n3", acquire=session)

        p3.send_signal(signal.SIGKILL)
        started = time.monotonic()
        index, _ = c.health.node(n3)
        while serf_health(n3) != "critical":
            assert time.monotonic() - started < 20, "serfHealth not critical within 20s"
            index, _ = c.health.node(n3, index=index, wait="2s")
        seconds = time.monotonic() - started
        print(f"\nserfHealth of SIGKILLed serf member turned critical after {seconds:.2f}s")
        assert c.session.info(session)[1] is None
        assert "Session" not in c.kv.get("serf-test/lock")[1]

        p2.send_signal(signal.SIGINT)  # serf agents leave gracefully on interrupt
        _poll(lambda: c.catalog.node(n2)[1] is None, 20)
        assert serf_health(n1) == "passing"
    finally:
        server.stop()
