"""python -m walle.lab.consul_standin: run the lab/test Consul stand-in in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .persist import COMPACT_BYTES
from .server import Standin, StandinConfig, parse_hostport


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m walle.lab.consul_standin",
        description="Consul HTTP API and DNS stand-in for the Walle lab and tests "
                    "(NOT Consul; lab and test use only).")
    p.add_argument("--data-dir", help="persist state here (write-ahead log, fsynced before "
                                      "each answer, compacted into snapshot.json)")
    p.add_argument("--http", action="append", metavar="HOST:PORT",
                   help="HTTP API listener (repeatable; default 127.0.0.1:8500)")
    p.add_argument("--dns", metavar="HOST:PORT", default="127.0.0.1:8600",
                   help="DNS listener, UDP and TCP (default 127.0.0.1:8600; 'off' disables)")
    p.add_argument("--node-name", help="this server's node name (default: the host name)")
    p.add_argument("--datacenter", default="dc1")
    p.add_argument("--serf-rpc", metavar="ADDR", help="follow this Serf agent's membership")
    p.add_argument("--agent", action="append", default=[], metavar="NODE=HOST:PORT",
                   help="an extra listener that acts as NODE's local agent (repeatable)")
    p.add_argument("--node-address", action="append", default=[], metavar="NODE=IP",
                   help="catalog address of an --agent node (default: its listener's host)")
    p.add_argument("--serf-bin", default="serf")
    p.add_argument("--compact-bytes", type=int, default=COMPACT_BYTES, metavar="N",
                   help=f"compact the write-ahead log into a snapshot past N bytes "
                        f"(default {COMPACT_BYTES})")
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> StandinConfig:
    agents = {}
    for item in args.agent:
        node, sep, addr = item.partition("=")
        if not sep or not node:
            raise ValueError(f"--agent {item!r}: use NODE=HOST:PORT")
        agents[node] = parse_hostport(addr, f"--agent {node}")
    addresses = {}
    for item in args.node_address:
        node, sep, ip = item.partition("=")
        if not sep or not node or not ip:
            raise ValueError(f"--node-address {item!r}: use NODE=IP")
        if node not in agents:
            raise ValueError(f"--node-address {node}: no --agent {node}=HOST:PORT given")
        addresses[node] = ip
    if args.compact_bytes < 1:
        raise ValueError("--compact-bytes: must be a positive number of bytes")
    config = StandinConfig(
        http=[parse_hostport(a, "--http") for a in args.http or ["127.0.0.1:8500"]],
        dns=None if args.dns == "off" else parse_hostport(args.dns, "--dns"),
        data_dir=args.data_dir, datacenter=args.datacenter, serf_rpc=args.serf_rpc,
        agents=agents, node_addresses=addresses, serf_bin=args.serf_bin,
        compact_bytes=args.compact_bytes)
    if args.node_name:
        config.node_name = args.node_name
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s consul-standin %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    standin = Standin(config)
    try:
        standin.start()
    except OSError as exc:
        print(f"error: cannot listen: {exc}", file=sys.stderr)
        standin.stop()
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    http = " ".join(f"{h}:{p}" for h, p in (s.server_address[:2] for s in standin.http_servers))
    dns = f"{standin.dns_addr[0]}:{standin.dns_addr[1]}" if standin.dns_addr else "off"
    print(f"ready http={http} dns={dns} node={config.node_name} (lab/test stand-in, not Consul)",
          flush=True)
    while not stop.wait(1.0):
        pass
    logging.getLogger("walle.consul_standin").info("stopping: saving state")
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
