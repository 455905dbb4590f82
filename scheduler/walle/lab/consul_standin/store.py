"""The stand-in's whole state: one object, one lock, JSON snapshots for --data-dir."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

from .agent import AgentMixin
from .catalog import CatalogMixin, make_check
from .core import StoreCore
from .events import EventMixin
from .kv import KVSpace
from .kvstore import KVMixin
from .sessions import SessionMixin, parse_duration

SNAPSHOT_VERSION = 1
REAP_INTERVAL_S = 30.0  # Consul's check_reap_interval


class Store(KVMixin, SessionMixin, CatalogMixin, AgentMixin, EventMixin, StoreCore):
    def __init__(self, datacenter: str = "dc1", clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.datacenter = datacenter
        self.kv = KVSpace()
        self.sessions: dict[str, dict] = {}
        self.session_deadline: dict[str, float] = {}
        self.lock_delay: dict[str, float] = {}
        self.nodes: dict[str, dict] = {}
        self.services: dict[tuple[str, str], dict] = {}
        self.checks: dict[tuple[str, str], dict] = {}
        self.check_defs: dict[tuple[str, str], dict] = {}
        self.critical_since: dict[tuple[str, str], float] = {}
        self.events: list[dict] = []
        self.ltime = 0
        self._next_reap = clock() + REAP_INTERVAL_S

    def register_agent_node(self, name: str, address: str, meta: dict | None = None) -> None:
        """A node whose agent the stand-in plays: in the catalog with serfHealth passing."""
        with self.write():
            if name not in self.nodes:
                self.ensure_node(name, address, meta)
            if (name, "serfHealth") not in self.checks:
                self.set_serf_health(name, alive=True)

    def tick(self) -> None:
        """Timers: session TTLs, TTL checks, lock-delays, the critical-service reaper."""
        now = self.clock()
        with self.cond:
            self.expire_sessions(now)
            self.expire_ttl_checks(now)
            if now >= self._next_reap:
                self._next_reap = now + REAP_INTERVAL_S
                self.reap_critical_services(now)

    # --- persistence ---------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self.cond:
            now = self.clock()
            return {
                "version": SNAPSHOT_VERSION, "saved_at": now, "index": self.index,
                "tables": dict(self.tables), "datacenter": self.datacenter,
                "kv": [{**e, "Value": _b64(e["Value"])} for e in self.kv.entries.values()],
                "tombstones": dict(self.kv.tombstones),
                "sessions": [dict(x) for x in self.sessions.values()],
                "lock_delay": dict(self.lock_delay), "nodes": list(self.nodes.values()),
                "services": [[n, s] for (n, _), s in self.services.items()],
                "checks": list(self.checks.values()),
                "check_defs": [[n, c, dict(d)] for (n, c), d in self.check_defs.items()],
                "critical_since": [[n, c, t] for (n, c), t in self.critical_since.items()],
                "events": self.events, "ltime": self.ltime,
            }

    def restore(self, snap: dict) -> None:
        """Load a snapshot. Session TTL timers restart at full length, as a new Consul leader
        does; TTL checks keep their remaining time."""
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"state snapshot version {snap.get('version')!r} is not "
                             f"{SNAPSHOT_VERSION}; move the data dir away to start empty")
        with self.cond:
            self.index = snap["index"]
            self.tables.clear()
            self.tables.update(snap["tables"])
            self.kv = KVSpace({e["Key"]: {**e, "Value": _unb64(e["Value"])} for e in snap["kv"]},
                              dict(snap["tombstones"]))
            self.sessions = {s["ID"]: s for s in snap["sessions"]}
            self.session_deadline = {}
            for session in self.sessions.values():
                self._arm_session_timer(session)
            self.lock_delay = dict(snap["lock_delay"])
            self.nodes = {n["Node"]: n for n in snap["nodes"]}
            self.services = {(n, s["ID"]): s for n, s in snap["services"]}
            self.checks = {(c["Node"], c["CheckID"]): c for c in snap["checks"]}
            self.check_defs = {(n, c): d for n, c, d in snap["check_defs"]}
            self.critical_since = {(n, c): t for n, c, t in snap["critical_since"]}
            self.events = snap["events"]
            self.ltime = snap["ltime"]

    def consul_service(self, node: str, port: int = 8300) -> None:
        """Servers register the `consul` service on themselves."""
        with self.write():
            self.put_service(node, {"ID": "consul", "Service": "consul", "Tags": [],
                                    "Address": "", "TaggedAddresses": {}, "Meta": {},
                                    "Port": port, "Weights": {"Passing": 1, "Warning": 1},
                                    "EnableTagOverride": False})


def _b64(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode() if value is not None else None


def _unb64(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value is not None else None


__all__ = ["Store", "make_check", "parse_duration"]
