"""walle-exporter overhead on one lab node (prints figures; not a test).

    sudo .venv/bin/python bench/exporter_overhead.py [--instances 50] [--seconds 60]
                                                     [--scrape-every 5] [--keep]

Builds its own one-node lab (`xbench`), provisions it with site.yml (roles node, consul,
exporter), starts N transient units named like Walle instances (walle-bench-<i>.service in
walle-bench-<i>.slice, each a `sleep`), then scrapes the exporter's /metrics every
--scrape-every seconds for --seconds and reads the exporter's own process_cpu_seconds_total
and process_resident_memory_bytes (prometheus_client's process collector). Prints the
exporter's CPU % of one core over the window, its RSS, and the time one scrape takes. The
lab is removed in a `finally` unless --keep.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scheduler"))

from walle.adapters.runner import run_command  # noqa: E402
from walle.cli.demo import provision  # noqa: E402
from walle.lab.nodes import Lab  # noqa: E402

PORT = 9851


def scrape(url: str) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as reply:  # noqa: S310 - lab address
        text = reply.read().decode()
    took = time.perf_counter() - started
    values = {}
    for line in text.splitlines():
        if line.startswith(("process_", "walle_usage_node_instances")):
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values, took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--scrape-every", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    lab = Lab("xbench", progress=lambda msg: print(msg, file=sys.stderr))
    try:
        lab.up(1)
        lab.start_consul()
        if provision(lab) != 0:
            return 1
        node = lab.nodes[0]
        script = "; ".join(
            f"systemd-run --quiet --unit=walle-bench-{i} --slice=walle-bench-{i}.slice "
            f"-p MemoryMax=64M /bin/sleep 100000" for i in range(args.instances))
        run_command(str(lab.inventory_path), [node.name], ["/bin/sh", "-c", script],
                    timeout=300)
        url = f"http://{node.address}:{PORT}/metrics"
        first, _ = scrape(url)
        started = time.monotonic()
        took: list[float] = []
        while time.monotonic() - started < args.seconds:
            time.sleep(args.scrape_every)
            last, seconds = scrape(url)
            took.append(seconds)
        elapsed = time.monotonic() - started
        cpu = last["process_cpu_seconds_total"] - first["process_cpu_seconds_total"]
        print(f"instances measured        {int(last['walle_usage_node_instances'])}")
        print(f"scrapes                   {len(took)} (every {args.scrape_every:g} s)")
        print(f"exporter CPU              {100 * cpu / elapsed:.2f} % of one core")
        print(f"exporter RSS              {last['process_resident_memory_bytes'] / 2**20:.1f} MiB")
        print(f"one scrape (median)       {1000 * sorted(took)[len(took) // 2]:.0f} ms")
        print(f"one scrape (max)          {1000 * max(took):.0f} ms")
        print(f"host load average         {os.getloadavg()[0]:.1f} (shared machine)")
        return 0
    finally:
        if not args.keep:
            lab.down()


if __name__ == "__main__":
    raise SystemExit(main())
