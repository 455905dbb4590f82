"""Wiring: the store, its timers, persistence, HTTP listeners, DNS, check runners and Serf.

LAB AND TEST ONLY. This is not Consul: one process, no Raft, no ACLs, no TLS.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from .checkrunner import CheckRunners
from .dns_server import start_dns
from .http_api import ApiServer, ConsulHttpApi
from .persist import COMPACT_BYTES, Persistence
from .serf import SerfFollower
from .store import Store

log = logging.getLogger("walle.consul_standin")
TICK_S = 0.1


def parse_hostport(text: str, field_name: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{field_name}: {text!r} is not HOST:PORT (e.g. 127.0.0.1:8500)")
    return host.strip("[]"), int(port)


@dataclass
class StandinConfig:
    http: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 8500)])
    dns: tuple[str, int] | None = ("127.0.0.1", 8600)
    data_dir: str | None = None
    node_name: str = field(default_factory=socket.gethostname)
    datacenter: str = "dc1"
    serf_rpc: str | None = None
    agents: dict[str, tuple[str, int]] = field(default_factory=dict)
    # catalog address of an --agent node (default: its listener's host)
    node_addresses: dict[str, str] = field(default_factory=dict)
    serf_bin: str = "serf"
    # write-ahead log size that triggers a compaction into snapshot.json
    compact_bytes: int = COMPACT_BYTES


class Standin:
    def __init__(self, config: StandinConfig):
        self.config = config
        self.store = Store(config.datacenter)
        self.persistence = Persistence(self.store, config.data_dir, config.compact_bytes) \
            if config.data_dir else None
        self.serf = SerfFollower(self.store, config.serf_rpc, config.serf_bin,
                                 protected={config.node_name, *config.agents}) \
            if config.serf_rpc else None
        self.checks = CheckRunners(self.store)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.http_servers: list[ApiServer] = []
        self.agent_servers: dict[str, ApiServer] = {}
        self.dns_servers: list = []
        self.dns_addr: tuple[str, int] | None = None

    @property
    def own_address(self) -> str:
        host = self.config.http[0][0] if self.config.http else "127.0.0.1"
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    def start(self) -> None:
        loaded = self.persistence.open() if self.persistence else False
        log.info("state %s", "restored from disk" if loaded else "starts empty")
        self.register_own_nodes()
        self.store.wait_durable()
        self.store.restore_hooks.append(self.register_own_nodes)
        if self.serf:
            self.serf.poll_once()
            self.serf.start()
        self.checks.start()
        self.checks.sync()
        self._spawn(self._tick, "consul-standin-timers")
        api = ConsulHttpApi(self.store, self.config.node_name,
                            self.serf.members if self.serf else list,
                            f"{self.own_address}:8300")
        for addr in self.config.http:
            self.http_servers.append(self._serve(ApiServer(addr, api, self._agent_node_for)))
        for node, addr in self.config.agents.items():
            self.agent_servers[node] = self._serve(ApiServer(addr, api, lambda _ip, n=node: n))
        if self.config.dns:
            self.dns_servers, self.dns_addr = start_dns(self.store, *self.config.dns)

    def register_own_nodes(self) -> None:
        """The server's node with its `consul` service and the --agent nodes: at start and
        after a snapshot restore (their agents would re-register them)."""
        self.store.register_agent_node(self.config.node_name, self.own_address)
        self.store.consul_service(self.config.node_name)
        for node, (host, _) in self.config.agents.items():
            address = self.config.node_addresses.get(node) or host
            self.store.register_agent_node(node, "127.0.0.1" if address == "0.0.0.0" else address)

    def _serve(self, server: ApiServer) -> ApiServer:
        self._spawn(lambda: server.serve_forever(poll_interval=0.2), "consul-standin-http")
        return server

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.store.tick()
            except Exception:  # noqa: BLE001 - a timer bug must not stop the timers
                log.exception("timer tick failed")

    def _agent_node_for(self, client_ip: str) -> str:
        """A request acts as the agent of the node whose address it comes from."""
        if client_ip in (self.own_address, "::1"):
            return self.config.node_name
        with self.store.cond:
            for name, node in sorted(self.store.nodes.items()):
                if node["Address"] == client_ip:
                    return name
        return self.config.node_name

    @property
    def http_addr(self) -> tuple[str, int]:
        return self.http_servers[0].server_address[:2]

    @property
    def agent_addrs(self) -> dict[str, tuple[str, int]]:
        return {n: s.server_address[:2] for n, s in self.agent_servers.items()}

    def stop(self) -> None:
        self._stop.set()
        for server in [*self.http_servers, *self.agent_servers.values(), *self.dns_servers]:
            server.shutdown()
            server.server_close()
        if self.serf:
            self.serf.stop()
        self.checks.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.persistence:
            self.persistence.close()


def start_in_thread(*, http: str | tuple[str, int] = ("127.0.0.1", 0),
                    dns: str | tuple[str, int] | None = ("127.0.0.1", 0),
                    data_dir: str | os.PathLike | None = None, node_name: str = "standin",
                    datacenter: str = "dc1", serf_rpc: str | None = None,
                    agents: dict[str, str | tuple[str, int]] | None = None,
                    extra_http: list[str | tuple[str, int]] | None = None,
                    node_addresses: dict[str, str] | None = None,
                    compact_bytes: int = COMPACT_BYTES) -> Standin:
    """Start a stand-in in this process; port 0 picks free ports. Returns the running Standin
    (`.http_addr`, `.dns_addr`, `.agent_addrs`, `.store`, `.stop()`). `node_addresses` gives
    an agent node's catalog address when it differs from its listener's host."""
    def addr(value, name):
        return parse_hostport(value, name) if isinstance(value, str) else tuple(value)

    config = StandinConfig(
        http=[addr(http, "http"), *(addr(a, "extra_http") for a in extra_http or [])],
        dns=addr(dns, "dns") if dns else None,
        data_dir=str(data_dir) if data_dir else None, node_name=node_name,
        datacenter=datacenter, serf_rpc=serf_rpc,
        agents={n: addr(a, f"agents[{n}]") for n, a in (agents or {}).items()},
        node_addresses=dict(node_addresses or {}), compact_bytes=compact_bytes)
    standin = Standin(config)
    standin.start()
    return standin
