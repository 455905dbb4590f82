"""The stand-in's whole state: one object, one lock; JSON snapshots and write-ahead log records
for --data-dir (persist.py writes them)."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Protocol

from .agent import CONSUL_SERVICE_ID, AgentMixin
from .catalog import CatalogMixin, make_check
from .core import StoreCore
from .errors import PersistError
from .events import MAX_EVENTS, EventMixin
from .journal import TUPLE_KEYED, Journal, SortedTrackedDict, TrackedDict
from .kv import KVSpace
from .kvstore import KVMixin
from .sessions import SessionMixin, parse_duration

log = logging.getLogger("walle.consul_standin.store")
SNAPSHOT_VERSION = 1
REAP_INTERVAL_S = 30.0  # Consul's check_reap_interval
# The tables a write-ahead log record carries key by key ("kv" and "tombstones" are the two
# halves of self.kv). Session TTL timers are not persisted: they restart on load, like Consul.
SORTED_TABLES = ("kv", "tombstones")  # read by prefix: their keys are kept sorted
LOGGED_TABLES = ("kv", "tombstones", "sessions", "lock_delay", "nodes", "services", "checks",
                 "check_defs", "critical_since")


class Persister(Protocol):
    """What the store needs from persistence (persist.Persistence): log a record under the
    store lock and return its sequence number; wait until a sequence number is on disk."""

    def log(self, record: dict) -> int: ...

    def wait(self, seq: int) -> None: ...


class Store(KVMixin, SessionMixin, CatalogMixin, AgentMixin, EventMixin, StoreCore):
    def __init__(self, datacenter: str = "dc1", clock: Callable[[], float] = time.time):
        super().__init__(clock)
        self.datacenter = datacenter
        self.journal = Journal()
        self.persister: Persister | None = None
        self._pending = threading.local()  # the log record this thread must wait for
        self._restored: dict | None = None
        # run inside the restoring write, after a snapshot restore (the server re-registers
        # its own and its agents' nodes, as their agents would)
        self.restore_hooks: list[Callable[[], None]] = []
        self.kv = KVSpace(self._tracked("kv"), self._tracked("tombstones"))
        self.prefix_indexes: dict[str, int] = {}  # kvstore._prefix_index's cache
        self.sessions: dict[str, dict] = self._tracked("sessions")
        self.session_deadline: dict[str, float] = {}
        self.lock_delay: dict[str, float] = self._tracked("lock_delay")
        self.nodes: dict[str, dict] = self._tracked("nodes")
        self.services: dict[tuple[str, str], dict] = self._tracked("services")
        self.checks: dict[tuple[str, str], dict] = self._tracked("checks")
        self.check_defs: dict[tuple[str, str], dict] = self._tracked("check_defs")
        self.critical_since: dict[tuple[str, str], float] = self._tracked("critical_since")
        self.events: list[dict] = []
        self._logged_events = self.events
        self.ltime = 0
        self._next_reap = clock() + REAP_INTERVAL_S

    def _tracked(self, table: str, data=()) -> TrackedDict:
        kind = SortedTrackedDict if table in SORTED_TABLES else TrackedDict
        return kind(self.journal, table, data)

    def _table(self, name: str) -> dict:
        if name == "kv":
            return self.kv.entries
        if name == "tombstones":
            return self.kv.tombstones
        return getattr(self, name)

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
            self.prefix_indexes.clear()
            self.index = snap["index"]
            self.tables.clear()
            self.tables.update(snap["tables"])
            self.kv = KVSpace(
                self._tracked("kv", {e["Key"]: {**e, "Value": _unb64(e["Value"])}
                                     for e in snap["kv"]}),
                self._tracked("tombstones", snap["tombstones"]))
            self.sessions = self._tracked("sessions", {s["ID"]: s for s in snap["sessions"]})
            self.session_deadline = {}
            self.arm_session_timers()
            self.lock_delay = self._tracked("lock_delay", snap["lock_delay"])
            self.nodes = self._tracked("nodes", {n["Node"]: n for n in snap["nodes"]})
            self.services = self._tracked("services",
                                          {(n, s["ID"]): s for n, s in snap["services"]})
            self.checks = self._tracked("checks",
                                        {(c["Node"], c["CheckID"]): c for c in snap["checks"]})
            self.check_defs = self._tracked("check_defs",
                                            {(n, c): d for n, c, d in snap["check_defs"]})
            self.critical_since = self._tracked(
                "critical_since", {(n, c): t for n, c, t in snap["critical_since"]})
            self.events = list(snap["events"])
            self._logged_events = self.events
            self.ltime = snap["ltime"]
            self.journal.take()

    def arm_session_timers(self) -> None:
        for session in self.sessions.values():
            self._arm_session_timer(session)

    def restore_snapshot(self, snap: dict) -> None:
        """PUT /v1/snapshot: replace the whole state atomically, as one logged write. Indexes
        are the snapshot's; the global index never goes back, so later writes move forward.
        Blocking queries return at once (Consul abandons the old state store)."""
        with self.write():
            before = self.index
            self.restore(snap)
            self.index = max(before, self.index)
            self.generation += 1
            self._restored = snap
            self.touch()
            for hook in self.restore_hooks:
                hook()

    # --- write-ahead log records ---------------------------------------------------------
    def commit(self) -> None:
        """End of the outermost write: hand the changes to the log; the writing thread waits
        for them in wait_durable() before it answers."""
        changed = self.journal.take()
        self.note_kv_changes(changed, self._write_index)
        touched, self._touched = self._touched, set()
        restored, self._restored = self._restored, None
        if self.persister is None:
            self._logged_events = self.events
            return
        new_events = self.events is not self._logged_events
        if not (changed or touched or restored or new_events):
            return
        record: dict = {"i": self.index, "t": {t: self.tables[t] for t in touched},
                        "l": self.ltime,
                        "c": [self._encode_change(table, key) for table, key in changed]}
        if restored is not None:
            record["r"] = restored
        if new_events:
            last = self._logged_events[-1]["LTime"] if self._logged_events else 0
            record["e"] = [e for e in self.events if e["LTime"] > last]
            self._logged_events = self.events
        try:
            self._pending.seq = self.persister.log(record)
        except Exception as exc:  # noqa: BLE001 - the writer answers 500, the server goes on
            log.exception("cannot log a write")
            self._pending.failed = exc

    def wait_durable(self) -> None:
        """Block until this thread's last write is on disk (raises if it cannot be saved)."""
        failed = getattr(self._pending, "failed", None)
        if failed is not None:
            self._pending.failed = None
            raise PersistError(f"failed to persist the write: {failed}")
        seq = getattr(self._pending, "seq", 0)
        if seq and self.persister is not None:
            self._pending.seq = 0
            self.persister.wait(seq)

    def _encode_change(self, table: str, key: Hashable) -> list:
        data = self._table(table)
        out_key = list(key) if table in TUPLE_KEYED else key
        if key not in data:
            return [table, out_key]
        value = data[key]
        if table == "kv":
            value = {**value, "Value": _b64(value["Value"])}
        return [table, out_key, value]

    def apply_record(self, record: dict) -> None:
        """Replay one log record (at load, before anything else runs)."""
        with self.cond:
            self.prefix_indexes.clear()
            if "r" in record:
                self.restore(record["r"])
            for change in record["c"]:
                table, key = change[0], change[1]
                if table in TUPLE_KEYED:
                    key = tuple(key)
                data = self._table(table)
                if len(change) == 2:
                    data.pop(key, None)
                elif table == "kv":
                    data[key] = {**change[2], "Value": _unb64(change[2]["Value"])}
                else:
                    data[key] = change[2]
            self.index = max(self.index, record["i"])
            self.tables.update(record["t"])
            self.ltime = record["l"]
            if "e" in record:
                self.events = [*self.events, *record["e"]][-MAX_EVENTS:]
                self._logged_events = self.events
            self.journal.take()

    def consul_service(self, node: str, port: int = 8300) -> None:
        """Servers register the `consul` service on themselves."""
        with self.write():
            self.put_service(node, {"ID": CONSUL_SERVICE_ID, "Service": "consul", "Tags": [],
                                    "Address": "", "TaggedAddresses": {}, "Meta": {},
                                    "Port": port, "Weights": {"Passing": 1, "Warning": 1},
                                    "EnableTagOverride": False})


def _b64(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode() if value is not None else None


def _unb64(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value is not None else None


__all__ = ["Store", "make_check", "parse_duration"]
