"""Write throughput of the Consul stand-in with persistence (`--data-dir`).

Starts `python -m walle.lab.consul_standin` in a subprocess on a temporary data dir and
measures acknowledged writes per second:

- KV PUT (`PUT /v1/kv/bench/<client>/<n>`), one client, then `--clients` concurrent clients;
- `PUT /v1/txn` (one `set` and one `get` per transaction), the same two ways.

Each phase runs for `--seconds`. Clients use one keep-alive HTTP connection each (http.client),
so the figure is the stand-in's, not a client library's. It prints figures; nothing asserts.
The machine is shared: run it alone and compare runs made under the same load (the load
average is printed).

    PYTHONPATH=scheduler .venv/bin/python bench/standin_writes.py [--seconds 5] [--clients 16]
        [--no-data-dir]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def start_standin(data_dir: str | None) -> tuple[subprocess.Popen, int]:
    argv = [sys.executable, "-m", "walle.lab.consul_standin", "--http", "127.0.0.1:0",
            "--dns", "off", "--node-name", "bench", "--log-level", "WARNING"]
    if data_dir:
        argv += ["--data-dir", data_dir]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise SystemExit(f"stand-in did not start: {line!r}")
    port = int(line.split()[1].split("=")[1].rsplit(":", 1)[1])
    return proc, port


def kv_put(conn: http.client.HTTPConnection, client: int, n: int) -> None:
    conn.request("PUT", f"/v1/kv/bench/{client}/{n}", body=b"x" * 64)
    resp = conn.getresponse()
    if resp.read() != b"true" or resp.status != 200:
        raise RuntimeError(f"PUT answered {resp.status}")


def txn(conn: http.client.HTTPConnection, client: int, n: int) -> None:
    value = base64.b64encode(b"y" * 64).decode()
    ops = [{"KV": {"Verb": "set", "Key": f"bench/txn/{client}/{n}", "Value": value}},
           {"KV": {"Verb": "get", "Key": f"bench/txn/{client}/{n}"}}]
    conn.request("PUT", "/v1/txn", body=json.dumps(ops))
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"txn answered {resp.status}")


def connect(port: int) -> http.client.HTTPConnection:
    """A connected keep-alive connection (opened before the clock starts, one at a time)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.request("GET", "/v1/status/leader")
    conn.getresponse().read()
    return conn


def run_phase(port: int, op, clients: int, seconds: float) -> float:
    """Acknowledged operations per second over `seconds` with `clients` threads."""
    counts = [0] * clients
    stop = threading.Event()
    errors: list[BaseException] = []
    conns = [connect(port) for _ in range(clients)]

    def worker(i: int) -> None:
        conn = conns[i]
        try:
            while not stop.is_set():
                op(conn, i, counts[i])
                counts[i] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if errors:
        raise SystemExit(f"a client failed: {errors[0]!r}")
    return sum(counts) / elapsed


def fsync_latency_ms(directory: str, rounds: int = 100) -> float:
    """Median time of a small append + fdatasync here: the floor of one durable write."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--no-data-dir", action="store_true", help="in-memory stand-in (no disk)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="standin-bench-") as tmp:
        data_dir = None if args.no_data_dir else os.path.join(tmp, "data")
        proc, port = start_standin(data_dir)
        try:
            print(f"stand-in pid {proc.pid} data_dir={data_dir or 'none'} "
                  f"load={os.getloadavg()[0]:.2f} "
                  f"fdatasync={fsync_latency_ms(tmp):.2f}ms (median, small append)")
            for name, op in (("KV PUT", kv_put), ("txn", txn)):
                for clients in (1, args.clients):
                    rate = run_phase(port, op, clients, args.seconds)
                    print(f"{name:7s} clients={clients:3d}: {rate:8.0f} writes/s")
            print(f"load={os.getloadavg()[0]:.2f} "
                  f"fdatasync={fsync_latency_ms(tmp):.2f}ms")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
