"""The stand-in answers a write only once it is on disk, as Consul answers after the Raft commit.

A stand-in subprocess with --data-dir takes acknowledged writes (KV, sessions and the locks
they hold, catalog and agent registrations), is SIGKILLed with no warning, and restarts on
the same data dir: every write it acknowledged must be there. Stand-in specific (a real Consul
is not killed by a test), so these tests never use CONSUL_HTTP_ADDR.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.consul

SCHEDULER_DIR = Path(__file__).resolve().parents[2] / "scheduler"


class StandinProcess:
    """`python -m walle.lab.consul_standin` on a free loopback port and a given data dir."""

    def __init__(self, data_dir: Path, *extra: str):
        env = {**os.environ, "PYTHONPATH": f"{SCHEDULER_DIR}{os.pathsep}"
                                           f"{os.environ.get('PYTHONPATH', '')}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "walle.lab.consul_standin", "--data-dir", str(data_dir),
             "--http", "127.0.0.1:0", "--dns", "off", "--node-name", "durable-server",
             "--log-level", "WARNING", *extra],
            stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        assert line.startswith("ready "), f"stand-in did not start: {line!r}"
        self.port = int(line.split()[1].split("=", 1)[1].rsplit(":", 1)[1])

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def call(conn: http.client.HTTPConnection, method: str, path: str, body: object = None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data)
    resp = conn.getresponse()
    raw = resp.read()
    return resp.status, (json.loads(raw) if raw and raw[:1] in b"[{tf\"0123456789" else raw)


class Acked:
    """What the stand-in acknowledged, by kind."""

    def __init__(self):
        self.kv: dict[str, bytes] = {}
        self.locks: dict[str, str] = {}
        self.nodes: dict[str, str] = {}
        self.services: list[str] = []


def one_round(conn, i: int, acked: Acked) -> None:
    """One acknowledged write of every kind that Consul persists."""
    key, value = f"durable/kv/{i}", f"value-{i}".encode()
    status, ok = call(conn, "PUT", f"/v1/kv/{key}", value)
    assert status == 200 and ok is True
    acked.kv[key] = value
    if i % 5 == 0:
        status, body = call(conn, "PUT", "/v1/session/create",
                            {"Name": f"s{i}", "LockDelay": "0s"})
        assert status == 200
        sid = body["ID"]
        lock = f"durable/lock/{i}"
        status, ok = call(conn, "PUT", f"/v1/kv/{lock}?acquire={sid}", b"held")
        assert status == 200 and ok is True
        acked.locks[lock] = sid
    if i % 7 == 0:
        node, address = f"durable-node-{i}", f"10.99.{i // 250 % 250}.{i % 250 + 1}"
        status, _ = call(conn, "PUT", "/v1/catalog/register", {
            "Node": node, "Address": address,
            "Service": {"Service": "durable-svc", "ID": f"svc-{i}", "Port": 1000 + i % 60000}})
        assert status == 200
        acked.nodes[node] = address
    if i % 11 == 0:
        status, _ = call(conn, "PUT", "/v1/agent/service/register",
                         {"Name": "durable-agent-svc", "ID": f"agent-svc-{i}", "Port": i % 60000})
        assert status == 200
        acked.services.append(f"agent-svc-{i}")


def assert_all_present(standin: StandinProcess, acked: Acked) -> None:
    conn = standin.conn()
    status, entries = call(conn, "GET", "/v1/kv/durable/?recurse")
    found = {e["Key"]: e for e in entries} if status == 200 else {}
    lost = [k for k, v in acked.kv.items()
            if k not in found or base64.b64decode(found[k]["Value"]) != v]
    lost_locks = [k for k, sid in acked.locks.items()
                  if k not in found or found[k].get("Session") != sid]
    _, sessions = call(conn, "GET", "/v1/session/list")
    session_ids = {s["ID"] for s in sessions}
    lost_sessions = [sid for sid in acked.locks.values() if sid not in session_ids]
    _, nodes = call(conn, "GET", "/v1/catalog/nodes")
    have_nodes = {n["Node"]: n["Address"] for n in nodes}
    lost_nodes = [n for n, a in acked.nodes.items() if have_nodes.get(n) != a]
    _, instances = call(conn, "GET", "/v1/catalog/service/durable-svc")
    lost_instances = sorted({f"svc-{n.rsplit('-', 1)[1]}" for n in acked.nodes}
                            - {s["ServiceID"] for s in instances})
    _, agent_services = call(conn, "GET", "/v1/agent/services")
    lost_agent = [s for s in acked.services if s not in agent_services]
    conn.close()
    assert (lost, lost_locks, lost_sessions, lost_nodes, lost_instances, lost_agent) == \
        ([], [], [], [], [], []), (
        f"acknowledged writes lost after SIGKILL: kv {len(lost)}/{len(acked.kv)}, "
        f"locks {len(lost_locks)}, sessions {len(lost_sessions)}, nodes {len(lost_nodes)}, "
        f"instances {len(lost_instances)}, agent services {len(lost_agent)}")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "standin-data"


def test_paced_writes_survive_sigkill(data_dir):
    standin = StandinProcess(data_dir)
    acked = Acked()
    try:
        conn = standin.conn()
        for i in range(60):
            one_round(conn, i, acked)
            time.sleep(0.01)
        standin.kill()  # right after the last acknowledgement, no warning
    finally:
        standin.stop()
    restarted = StandinProcess(data_dir)
    try:
        assert_all_present(restarted, acked)
    finally:
        restarted.stop()


@pytest.mark.parametrize("compaction", ["default", "every-64KiB"])
def test_tight_loop_writes_survive_sigkill(data_dir, compaction):
    """Writes as fast as they are acknowledged, from 4 clients; SIGKILL mid-stream (with
    compactions running all along in the second case)."""
    extra = ["--compact-bytes", "65536"] if compaction == "every-64KiB" else []
    standin = StandinProcess(data_dir, *extra)
    ackeds = [Acked() for _ in range(4)]
    stop = threading.Event()

    def client(n: int) -> None:
        conn = standin.conn()
        try:
            for i in range(n * 100_000, n * 100_000 + 3000):
                if stop.is_set():
                    return
                one_round(conn, i, ackeds[n])
        except (OSError, http.client.HTTPException):
            return  # the kill cut the connection: that write was never acknowledged

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        # a second of writes, and (second case) at least one compaction done before the kill:
        # on a loaded machine a second of writes may not reach 64 KiB
        deadline = time.monotonic() + (30.0 if extra else 1.0)
        time.sleep(1.0)
        while extra and not (data_dir / "snapshot.json").exists() and \
                time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.05)
        standin.kill()
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        standin.stop()
    acked = Acked()
    for a in ackeds:
        acked.kv.update(a.kv)
        acked.locks.update(a.locks)
        acked.nodes.update(a.nodes)
        acked.services += a.services
    assert len(acked.kv) > 20, "the clients did not get going before the kill"
    if compaction != "default":  # the kill found compactions done (or under way)
        assert (data_dir / "snapshot.json").exists()
    restarted = StandinProcess(data_dir, *extra)
    try:
        assert_all_present(restarted, acked)
    finally:
        restarted.stop()


def test_data_dir_is_private(data_dir):
    """State holds every KV value (tokens and secrets included): 0700 dir, 0600 files."""
    standin = StandinProcess(data_dir)
    try:
        conn = standin.conn()
        one_round(conn, 0, Acked())
        conn.close()
    finally:
        standin.stop()
    assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 == 0
    files = [p for p in data_dir.iterdir() if p.is_file()]
    assert files
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {p.name: "0o600" for p in files}
