"""Consul's HTTP API (/v1/...) over the Store. Each route is a short method; blocking reads go
through `_blocking`, which applies ?index=/?wait= and sets the X-Consul-* headers."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from . import filters, kv
from .catalog import STATES, meta_matches
from .core import query_timeout
from .durations import parse_duration
from .errors import ConsulError, PersistError, bad_request, not_found
from .fields import get
from .filters import compile_filter
from .kvstore import txn_is_read_only
from .sessions import require_session_uuid
from .snapshot import MAX_ARCHIVE_BYTES, SnapshotError, make_archive, read_archive
from .store import Store

log = logging.getLogger("walle.consul_standin.http")
MAX_BODY = 4 * 1024 * 1024
GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # what Go's strconv.ParseBool accepts
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
CONSUL_VERSION = "1.17.0"  # the Consul whose API the stand-in follows
SERF_STATUS = {"alive": 1, "leaving": 2, "left": 3, "failed": 4}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    agent_node: str

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of a repeated parameter, as Go's url.Values.Get reads it."""
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        """A switch read like agent_endpoint.go's ?replace-existing-checks: on when present
        with no value or exactly "true" (the first value, as Go's Query().Get)."""
        return name in self.query and self.query[name][0] in ("", "true")

    def go_bool(self, name: str) -> bool:
        """A parameter read like health_endpoint.go's ?passing: present without a value is
        true, otherwise Go's strconv.ParseBool, anything else 400."""
        if name not in self.query:
            return False
        raw = self.query[name][0]
        if raw == "" or raw in GO_TRUE:
            return True
        if raw in GO_FALSE:
            return False
        raise bad_request(f"Invalid value for ?{name}")

    def int_arg(self, name: str) -> int | None:
        raw = self.arg(name)
        if raw is None or raw == "":
            return None
        try:
            value = int(raw)
        except ValueError as exc:
            raise bad_request(f"Invalid ?{name}= value {raw!r}: expected an integer") from exc
        if not 0 <= value < 2**64:  # Consul parses these as uint64
            raise bad_request(f"Invalid ?{name}= value {raw!r}: must be between 0 and 2^64-1")
        return value

    def uint64(self, name: str) -> int | None:
        """A KV ?flags=/?cas= value: Consul's handler returns strconv.ParseUint's error as is,
        which reaches the client as a 500."""
        if name not in self.query:
            return None
        raw = self.query[name][0]
        if not raw.isdigit():
            raise ConsulError(500, f'strconv.ParseUint: parsing "{raw}": invalid syntax')
        if int(raw) >= 2**64:
            raise ConsulError(500, f'strconv.ParseUint: parsing "{raw}": value out of range')
        return int(raw)

    def conflicting(self, *names: str) -> None:
        """kvs_endpoint.go conflictingFlags: at most one of these parameters (400)."""
        if sum(name in self.query for name in names) > 1:
            raise bad_request(f"Conflicting flags: {'&'.join(sorted(self.query))}")

    def json(self) -> object:
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise bad_request(f"Request decode failed: {exc}") from exc


@dataclass
class Response:
    status: int = 200
    body: object = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


def node_meta_args(req: Request) -> dict[str, str]:
    out = {}
    for item in req.query.get("node-meta", []):
        key, sep, value = item.partition(":")
        if not sep:
            raise bad_request(f"node-meta {item!r}: use key:value")
        out[key] = value
    return out


class ConsulHttpApi:
    def __init__(self, store: Store, node_name: str, serf_members: Callable[[], list[dict]],
                 leader_addr: str):
        self.store = store
        self.node_name = node_name
        self.serf_members = serf_members
        self.leader_addr = leader_addr
        self.routes: list[tuple[set[str], re.Pattern, Callable]] = []
        self._build_routes()

    def _route(self, methods: str, pattern: str, handler: Callable) -> None:
        self.routes.append((set(methods.split()), re.compile(f"^{pattern}$"), handler))

    def _build_routes(self) -> None:
        r = self._route
        r("GET PUT DELETE", r"/v1/kv/(.*)", self.kv_endpoint)
        r("PUT", r"/v1/txn", self.txn)
        r("PUT", r"/v1/session/create", self.session_create)
        r("PUT", r"/v1/session/renew/(.+)", self.session_renew)
        r("PUT", r"/v1/session/destroy/(.+)", self.session_destroy)
        r("GET", r"/v1/session/info/(.+)", self.session_info)
        r("GET", r"/v1/session/node/(.+)", self.session_node)
        r("GET", r"/v1/session/list", self.session_list)
        r("GET", r"/v1/catalog/nodes", self.catalog_nodes)
        r("GET", r"/v1/catalog/services", self.catalog_services)
        r("GET", r"/v1/catalog/service/(.+)", self.catalog_service)
        r("GET", r"/v1/catalog/node/(.+)", self.catalog_node)
        r("GET", r"/v1/catalog/datacenters", self.catalog_datacenters)
        r("PUT", r"/v1/catalog/register", self.catalog_register)
        r("PUT", r"/v1/catalog/deregister", self.catalog_deregister)
        r("GET", r"/v1/health/node/(.+)", self.health_node)
        r("GET", r"/v1/health/checks/(.+)", self.health_checks)
        r("GET", r"/v1/health/state/(.+)", self.health_state)
        r("GET", r"/v1/health/service/(.+)", self.health_service)
        r("GET", r"/v1/agent/self", self.agent_self)
        r("GET", r"/v1/agent/members", self.agent_members)
        r("PUT", r"/v1/agent/service/register", self.agent_service_register)
        r("PUT", r"/v1/agent/service/deregister/(.+)", self.agent_service_deregister)
        r("PUT", r"/v1/agent/service/maintenance/(.+)", self.agent_service_maintenance)
        r("GET", r"/v1/agent/service/(.+)", self.agent_service)
        r("GET", r"/v1/agent/services", self.agent_services)
        r("GET", r"/v1/agent/checks", self.agent_checks)
        r("PUT", r"/v1/agent/check/register", self.agent_check_register)
        r("PUT", r"/v1/agent/check/deregister/(.+)", self.agent_check_deregister)
        r("PUT", r"/v1/agent/check/(pass|warn|fail)/(.+)", self.agent_check_ttl)
        r("PUT", r"/v1/agent/check/update/(.+)", self.agent_check_update)
        r("PUT", r"/v1/agent/maintenance", self.agent_maintenance)
        r("PUT", r"/v1/event/fire/(.+)", self.event_fire)
        r("GET", r"/v1/event/list", self.event_list)
        r("GET PUT", r"/v1/snapshot", self.snapshot)
        r("GET", r"/v1/status/leader", lambda req: Response(body=self.leader_addr))
        r("GET", r"/v1/status/peers", lambda req: Response(body=[self.leader_addr]))

    def handle(self, req: Request) -> Response:
        dc = req.arg("dc")
        if dc and dc != self.store.datacenter:
            return Response(500, raw=b"No path to datacenter")
        allowed: set[str] = set()
        for methods, pattern, handler in self.routes:
            m = pattern.match(req.path)
            if not m:
                continue
            if req.method not in methods:
                allowed |= methods
                continue
            try:
                resp = handler(req, *(unquote(g) for g in m.groups()))
            except ConsulError as exc:
                resp = Response(exc.status, raw=exc.message.encode())
            try:
                # answer a write only once it is on disk (Consul: after the Raft commit)
                self.store.wait_durable()
            except PersistError as exc:
                return Response(500, raw=str(exc).encode())
            return resp
        if allowed:
            return Response(405, raw=f"method {req.method} not allowed".encode())
        return Response(404, raw=b"404 page not found")

    # --- blocking ------------------------------------------------------------------------
    def _blocking(self, req: Request, view: Callable, changed: Callable | None = None,
                  consistency: bool = True, index_of: Callable[[], int] | None = None
                  ) -> Response:
        mode = consistency_mode(req) if consistency else None
        min_index = req.int_arg("index") or 0
        wait_text = req.arg("wait")
        try:
            wait_s = parse_duration(wait_text, "wait") if wait_text else None
        except ValueError as exc:
            raise bad_request(f"Invalid wait time: {exc}") from exc
        kwargs = {"changed": changed} if changed else {}
        idx, data = self.store.block(view, min_index, query_timeout(wait_s), index_of=index_of,
                                     **kwargs)
        headers = meta_headers(idx)
        if mode:
            headers["X-Consul-Effective-Consistency"] = mode
        return Response(body=data, headers=headers)

    # --- KV ------------------------------------------------------------------------------
    def kv_endpoint(self, req: Request, key: str) -> Response:
        if req.method == "GET":
            return self.kv_get(req, key)
        if req.method == "PUT":
            return self.kv_put(req, key)
        # Consul reads ?recurse by presence, whatever its value; ?cas answers the CAS result,
        # a plain or recursive delete always true
        req.conflicting("recurse", "cas")
        recurse = "recurse" in req.query
        if not key and not recurse:
            raise bad_request("Missing key name")
        return Response(body=self.store.kv_delete(key, recurse, req.uint64("cas")))

    def kv_get(self, req: Request, key: str) -> Response:
        keys, recurse = "keys" in req.query, "recurse" in req.query
        if not key and not keys and not recurse:
            raise bad_request("Missing key name")
        # kvs_endpoint.go also takes the historic misspelling ?seperator=
        separator = req.arg("separator", req.arg("seperator", "")) or ""
        resp = self._blocking(req, lambda: self.store.kv_read(key, recurse, keys, separator),
                              index_of=lambda: self.store.kv_index(key, recurse, keys))
        data = resp.body
        if data is None or (not data and (recurse or key)):
            # Consul: 404 when nothing matches; only a keys listing of the root may be empty
            return Response(404, raw=b"", headers=resp.headers)
        if keys:
            return resp
        if "raw" in req.query and not recurse:
            # never sniffed as HTML (CVE-2020-25864): the headers Consul sets
            return Response(raw=data[0]["Value"] or b"", content_type="text/plain",
                            headers={**resp.headers, "X-Content-Type-Options": "nosniff",
                                     "Content-Security-Policy": "sandbox"})
        resp.body = [kv.to_json(e) for e in data]
        return resp

    def kv_put(self, req: Request, key: str) -> Response:
        req.conflicting("cas", "acquire", "release")
        flags = req.uint64("flags") or 0
        ok = self.store.kv_put(key, req.body or None, flags, req.uint64("cas"),
                               req.arg("acquire"), req.arg("release"))
        return Response(body=ok)

    def txn(self, req: Request) -> Response:
        ops = req.json()
        read_only = txn_is_read_only(ops)
        if read_only:
            consistency_mode(req)  # refuses conflicting modes as any read does
        status, body = self.store.txn(ops)
        headers = {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"} \
            if read_only else {}
        return Response(status, body=body, headers=headers)

    # --- sessions ------------------------------------------------------------------------
    def session_create(self, req: Request) -> Response:
        body = req.json() or {}
        if not isinstance(body, dict):
            raise bad_request("Request decode failed: expected a JSON object")
        return Response(body={"ID": self.store.session_create(body, req.agent_node)})

    def session_renew(self, req: Request, session_id: str) -> Response:
        require_session_uuid(session_id)
        session = self.store.session_renew(session_id)
        if session is None:
            raise not_found(f"Session id '{session_id}' not found")
        return Response(body=[session])

    def session_destroy(self, req: Request, session_id: str) -> Response:
        require_session_uuid(session_id)
        return Response(body=self.store.session_destroy(session_id))

    def session_info(self, req: Request, session_id: str) -> Response:
        require_session_uuid(session_id)
        return self._blocking(req, lambda: self.store.session_view(session_id=session_id))

    def session_node(self, req: Request, node: str) -> Response:
        """session.mdx List Sessions for Node: `node` is the node's name or ID."""
        return self._blocking(req, lambda: self.store.session_view(node=self._node_name(node)))

    def _node_name(self, ref: str) -> str:
        """A node named by name or by ID (health/node, session/node take either)."""
        return next((n for n, rec in self.store.nodes.items() if rec.get("ID") == ref), ref)

    def session_list(self, req: Request) -> Response:
        return self._blocking(req, lambda: self.store.session_view())

    # --- catalog -------------------------------------------------------------------------
    @staticmethod
    def _filter(req: Request, schema: dict) -> Callable[[list], list]:
        """?filter= compiled once, before the query blocks (a bad one fails at once)."""
        keep = compile_filter(req.arg("filter"), schema)
        return lambda items: [i for i in items if keep(i)]

    def catalog_nodes(self, req: Request) -> Response:
        meta, s, keep = node_meta_args(req), self.store, self._filter(req, filters.NODE)

        def view():
            nodes = [n for _, n in sorted(s.nodes.items())
                     if all(n["Meta"].get(k) == v for k, v in meta.items())]
            return s.table_index("nodes"), keep(nodes)
        return self._blocking(req, view, index_of=lambda: s.table_index("nodes"))

    def catalog_services(self, req: Request) -> Response:
        """catalog.mdx: ?filter= applies to the service instances (ServiceNode selectors);
        the answer maps each service with a matching instance to those instances' tags."""
        meta, s = node_meta_args(req), self.store
        keep = self._filter(req, filters.SERVICE_NODE)

        def view():
            out: dict[str, list[str]] = {}
            for row in keep([catalog_row(n, svc) for n, svc in s.instances(node_meta=meta)]):
                tags = out.setdefault(row["ServiceName"], [])
                tags.extend(t for t in row["ServiceTags"] if t not in tags)
            return s.table_index("services", "nodes"), out
        return self._blocking(req, view, index_of=lambda: s.table_index("services", "nodes"))

    def catalog_service(self, req: Request, name: str) -> Response:
        tags, meta, s = req.query.get("tag", []), node_meta_args(req), self.store
        keep = self._filter(req, filters.SERVICE_NODE)

        def view():
            rows = [catalog_row(n, svc) for n, svc in s.instances(name, tags, meta)]
            return s.service_index(name), keep(rows)
        return self._blocking(req, view, index_of=lambda: s.service_index(name))

    def catalog_node(self, req: Request, node: str) -> Response:
        s, keep = self.store, compile_filter(req.arg("filter"), filters.SERVICE)

        def view():
            if node not in s.nodes:
                return s.table_index("nodes", "services"), None
            # filtering.mdx: here the filter applies to the node's Services
            services = {sid: service_json(svc) for (n, sid), svc in sorted(s.services.items())
                        if n == node and keep(service_json(svc))}
            return s.table_index("nodes", "services"), {"Node": s.nodes[node],
                                                         "Services": services}
        return self._blocking(req, view, index_of=lambda: s.table_index("nodes", "services"))

    def catalog_datacenters(self, req: Request) -> Response:
        return Response(body=[self.store.datacenter])

    def catalog_register(self, req: Request) -> Response:
        return Response(body=self.store.catalog_register(_object(req)))

    def catalog_deregister(self, req: Request) -> Response:
        return Response(body=self.store.catalog_deregister(_object(req)))

    # --- health --------------------------------------------------------------------------
    def health_node(self, req: Request, node: str) -> Response:
        s, keep = self.store, self._filter(req, filters.CHECK)
        return self._blocking(req, lambda: (s.table_index("checks"), keep(
            [c for (n, _), c in sorted(s.checks.items()) if n == self._node_name(node)])),
            index_of=lambda: s.table_index("checks"))

    def _on_meta_nodes(self, req: Request) -> Callable[[dict], bool]:
        """health.mdx ?node-meta=k:v (checks, state): only checks of nodes with that meta."""
        meta, nodes = node_meta_args(req), self.store.nodes
        return lambda c: not meta or (c["Node"] in nodes and meta_matches(nodes[c["Node"]], meta))

    def health_checks(self, req: Request, service: str) -> Response:
        s, keep, on_node = self.store, self._filter(req, filters.CHECK), self._on_meta_nodes(req)
        return self._blocking(req, lambda: (s.service_index(service), keep(
            [c for _, c in sorted(s.checks.items())
             if c["ServiceName"] == service and on_node(c)])),
            index_of=lambda: s.service_index(service))

    def health_state(self, req: Request, state: str) -> Response:
        if state not in (*STATES, "any"):
            raise bad_request(f"Bad check state: {state} (use any|passing|warning|critical)")
        s, keep, on_node = self.store, self._filter(req, filters.CHECK), self._on_meta_nodes(req)
        return self._blocking(req, lambda: (s.table_index("checks"), keep(
            [c for _, c in sorted(item for item in s.checks.items()
                                  if (state == "any" or item[1]["Status"] == state)
                                  and on_node(item[1]))])),
            index_of=lambda: s.table_index("checks"))

    def health_service(self, req: Request, name: str) -> Response:
        tags, meta, s = req.query.get("tag", []), node_meta_args(req), self.store
        passing, keep = req.go_bool("passing"), self._filter(req, filters.HEALTH_ROW)

        def view():
            rows = []
            for node, svc in s.instances(name, tags, meta):
                checks = s.checks_of(node["Node"], svc["ID"])
                if passing and any(c["Status"] != "passing" for c in checks):
                    continue
                rows.append({"Node": node, "Service": service_json(svc), "Checks": checks})
            return s.service_index(name), keep(rows)
        return self._blocking(req, view, index_of=lambda: s.service_index(name))

    # --- agent ---------------------------------------------------------------------------
    def agent_self(self, req: Request) -> Response:
        node = self.store.nodes.get(req.agent_node, {})
        return Response(body={
            "Config": {"Datacenter": self.store.datacenter, "NodeName": req.agent_node,
                       "NodeID": node.get("ID", ""), "Server": req.agent_node == self.node_name,
                       "Revision": "walle-standin", "Version": CONSUL_VERSION,
                       "PrimaryDatacenter": self.store.datacenter},
            "Member": self._member(req.agent_node), "Meta": node.get("Meta", {}),
            "Stats": self._stats(req.agent_node), "DebugConfig": {}, "Coord": None,
            "xDS": None})

    def _stats(self, agent_node: str) -> dict[str, dict[str, str]]:
        """agent/self's Stats as Consul's agent builds it (agent.Stats() plus the server's or
        client's own): all values strings. The server is the leader of a one-server cluster;
        clients know one server and, like Consul's clients, report no leader_addr.
        `walle_standin` is not Consul's: it tells a reader this is the lab stand-in."""
        s = self.store
        members = self._members()
        checks = self.store.agent_checks(agent_node)
        ttl = sum(1 for (n, _), d in s.check_defs.items() if n == agent_node and
                  d.get("Type") == "ttl")
        stats = {
            "agent": {"checks": str(len(checks)), "check_ttls": str(ttl),
                      "check_monitors": "0",
                      "services": str(len(s.agent_services(agent_node)))},
            "build": {"version": CONSUL_VERSION, "revision": "walle-standin",
                      "prerelease": ""},
            "serf_lan": {"members": str(len(members)),
                         "failed": str(sum(m["Status"] == SERF_STATUS["failed"]
                                           for m in members)),
                         "left": str(sum(m["Status"] == SERF_STATUS["left"] for m in members)),
                         "encrypted": "false"},
            "walle_standin": {"lab_and_test_only": "true"},
        }
        if agent_node != self.node_name:
            stats["consul"] = {"server": "false", "known_servers": "1", "acl": "disabled"}
            return stats
        index = str(s.index)
        stats["consul"] = {"server": "true", "leader": "true", "leader_addr": self.leader_addr,
                           "bootstrap": "true", "known_datacenters": "1", "acl": "disabled"}
        stats["raft"] = {"state": "Leader", "term": "1", "num_peers": "0",
                         "last_log_index": index, "commit_index": index,
                         "applied_index": index, "last_contact": "0",
                         "protocol_version": "3"}
        return stats

    def _members(self) -> list[dict]:
        members = self.serf_members()
        known = {m["Name"] for m in members}
        for name, node in sorted(self.store.nodes.items()):
            if name not in known and (name, "serfHealth") in self.store.checks:
                alive = self.store.checks[(name, "serfHealth")]["Status"] == "passing"
                members.append(member_json(name, node["Address"], 8301,
                                           self._member_tags(name, node),
                                           "alive" if alive else "failed"))
        return members

    def _member_tags(self, name: str, node: dict) -> dict[str, str]:
        """The Serf tags a Consul agent gossips (agent/consul: role, dc, id, build, vsn...;
        servers add port and bootstrap), for members that Serf does not report itself."""
        tags = {"role": "node", "dc": self.store.datacenter, "id": node.get("ID", ""),
                "segment": "", "build": f"{CONSUL_VERSION}:walle-standin", "vsn": "2",
                "vsn_min": "2", "vsn_max": "3"}
        if name == self.node_name:
            tags.update(role="consul", port="8300", bootstrap="1", raft_vsn="3")
        return tags

    def _member(self, name: str) -> dict:
        return next((m for m in self._members() if m["Name"] == name), {})

    def agent_members(self, req: Request) -> Response:
        return Response(body=self._members())

    def agent_service_register(self, req: Request) -> Response:
        self.store.agent_register_service(req.agent_node, _object(req),
                                          req.flag("replace-existing-checks"))
        return Response(raw=b"")

    def agent_service_deregister(self, req: Request, service_id: str) -> Response:
        self.store.agent_deregister_service(req.agent_node, service_id)
        return Response(raw=b"")

    def _hash_blocking(self, req: Request, view: Callable[[], object]) -> Response:
        """Agent-local endpoints block on ?hash= (X-Consul-ContentHash), not on an index."""
        def hashed():
            data = view()
            return content_hash(data), data
        seen = req.arg("hash") or ""
        wait_text = req.arg("wait")
        try:
            wait_s = parse_duration(wait_text, "wait") if wait_text else None
        except ValueError as exc:
            raise bad_request(f"Invalid wait time: {exc}") from exc
        seen_int = int(seen, 16) if re.fullmatch(r"[0-9a-f]{16}", seen) else 0
        value, data = self.store.block(hashed, seen_int, query_timeout(wait_s),
                                       changed=lambda now, old: now != old)
        return Response(body=data, headers={"X-Consul-ContentHash": f"{value:016x}"})

    def agent_service(self, req: Request, service_id: str) -> Response:
        """agent/service.mdx Get Service Configuration: the service plus a ContentHash field,
        the same hash as X-Consul-ContentHash."""
        resp = self._hash_blocking(
            req, lambda: self.store.agent_service(req.agent_node, service_id))
        resp.body = {**resp.body, "ContentHash": resp.headers["X-Consul-ContentHash"]}
        return resp

    def agent_services(self, req: Request) -> Response:
        """agent/service.mdx List Services: not a blocking endpoint (no ?hash=, no
        X-Consul-ContentHash; only Get Service Configuration blocks on a hash)."""
        keep = compile_filter(req.arg("filter"), filters.SERVICE)
        with self.store.cond:
            services = self.store.agent_services(req.agent_node)
        return Response(body={k: v for k, v in services.items() if keep(v)})

    def agent_checks(self, req: Request) -> Response:
        """agent/check.mdx List Checks: not a blocking endpoint either."""
        keep = compile_filter(req.arg("filter"), filters.CHECK)
        with self.store.cond:
            checks = self.store.agent_checks(req.agent_node)
        return Response(body={k: v for k, v in checks.items() if keep(v)})

    def agent_check_register(self, req: Request) -> Response:
        self.store.agent_register_check(req.agent_node, _object(req))
        return Response(raw=b"")

    def agent_check_deregister(self, req: Request, check_id: str) -> Response:
        self.store.agent_deregister_check(req.agent_node, check_id)
        return Response(raw=b"")

    def agent_check_ttl(self, req: Request, verb: str, check_id: str) -> Response:
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[verb]
        self.store.agent_ttl_update(req.agent_node, check_id, status, req.arg("note", "") or "")
        return Response(raw=b"")

    def agent_check_update(self, req: Request, check_id: str) -> Response:
        body = _object(req)
        self.store.agent_ttl_update(req.agent_node, check_id, str(get(body, "Status", "")),
                                    str(get(body, "Output", "")))
        return Response(raw=b"")

    def agent_service_maintenance(self, req: Request, service_id: str) -> Response:
        self.store.agent_service_maintenance(req.agent_node, service_id, _enable_arg(req),
                                             req.arg("reason", "") or "")
        return Response(raw=b"")

    def agent_maintenance(self, req: Request) -> Response:
        self.store.agent_node_maintenance(req.agent_node, _enable_arg(req),
                                          req.arg("reason", "") or "")
        return Response(raw=b"")

    # --- snapshot ----------------------------------------------------------------------
    def snapshot(self, req: Request) -> Response:
        """GET: a gzipped tar archive of the whole state, X-Consul-Index = its index.
        PUT: verify the archive completely, then replace the state in one write."""
        if req.method == "GET":
            state = self.store.snapshot()
            return Response(raw=make_archive(state, state["index"]),
                            headers=meta_headers(state["index"]),
                            content_type="application/x-gzip")
        try:
            state = read_archive(req.body)
        except SnapshotError as exc:
            return Response(500, raw=str(exc).encode())
        self.store.restore_snapshot(state)
        return Response(raw=b"")

    # --- events --------------------------------------------------------------------------
    def event_fire(self, req: Request, name: str) -> Response:
        return Response(body=self.store.event_fire(
            name, req.body, req.arg("node", "") or "", req.arg("service", "") or "",
            req.arg("tag", "") or ""))

    def event_list(self, req: Request) -> Response:
        name = req.arg("name", "") or ""
        # event_endpoint.go parses ?index/?wait only: the list is the agent's, not a server's
        return self._blocking(req, lambda: self.store.event_view(req.agent_node, name),
                              changed=lambda idx, seen: idx != seen, consistency=False)


def consistency_mode(req: Request) -> str:
    """api-docs/features/consistency: ?stale, ?consistent, or the default ("leader"), named
    back in X-Consul-Effective-Consistency. One server is always the leader, so every mode
    reads the same state; the conflicting combinations are refused as Consul's parse does."""
    stale, consistent = "stale" in req.query, "consistent" in req.query
    if stale and consistent:
        raise bad_request("Cannot specify ?stale with ?consistent, conflicting semantics.")
    if "cached" in req.query and consistent:
        raise bad_request("Cannot specify ?cached with ?consistent, conflicting semantics.")
    max_stale = req.arg("max_stale")
    if max_stale:
        try:
            parse_duration(max_stale, "max_stale")
        except ValueError:
            raise bad_request(f'Invalid max_stale value "{max_stale}"') from None
    return "stale" if stale else "consistent" if consistent else "leader"


def content_hash(data: object) -> int:
    digest = hashlib.blake2b(json.dumps(data, sort_keys=True).encode(), digest_size=8)
    return max(int.from_bytes(digest.digest(), "big"), 1)


def meta_headers(index: int) -> dict[str, str]:
    return {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0"}


def service_json(svc: dict) -> dict:
    return {k: svc[k] for k in ("ID", "Service", "Tags", "Address", "TaggedAddresses", "Meta",
                                "Port", "Weights", "EnableTagOverride", "CreateIndex",
                                "ModifyIndex")}


def catalog_row(node: dict, svc: dict) -> dict:
    return {"ID": node["ID"], "Node": node["Node"], "Address": node["Address"],
            "Datacenter": node["Datacenter"], "TaggedAddresses": node["TaggedAddresses"],
            "NodeMeta": node["Meta"], "ServiceID": svc["ID"], "ServiceName": svc["Service"],
            "ServiceTags": svc["Tags"], "ServiceAddress": svc["Address"],
            "ServiceTaggedAddresses": svc["TaggedAddresses"], "ServiceWeights": svc["Weights"],
            "ServiceMeta": svc["Meta"], "ServicePort": svc["Port"],
            "ServiceEnableTagOverride": svc["EnableTagOverride"],
            "CreateIndex": svc["CreateIndex"], "ModifyIndex": svc["ModifyIndex"]}


def member_json(name: str, addr: str, port: int, tags: dict, status: str) -> dict:
    return {"Name": name, "Addr": addr, "Port": port, "Tags": tags,
            "Status": SERF_STATUS.get(status, 0), "ProtocolMin": 1, "ProtocolMax": 5,
            "ProtocolCur": 2, "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4}


def _object(req: Request) -> dict:
    body = req.json()
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: expected a JSON object body")
    return body


def _enable_arg(req: Request) -> bool:
    """agent_endpoint.go: ?enable is required and read with strconv.ParseBool."""
    raw = req.arg("enable")
    if raw is None or raw == "":
        raise bad_request("Missing value for enable")
    if raw not in GO_TRUE + GO_FALSE:
        raise bad_request(f'Invalid value for enable: "{raw}"')
    return raw in GO_TRUE


# --- the HTTP server adapter ---------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # one buffered write per response and no Nagle: avoids 40 ms delayed-ACK stalls
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: ApiServer

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > (MAX_ARCHIVE_BYTES if parts.path == "/v1/snapshot" else MAX_BODY):
            self._send(Response(413, raw=b"Request body too large"))
            return
        body = self.rfile.read(length) if length else b""
        req = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                      body, self.server.agent_node_for(self.client_address[0]))
        try:
            resp = self.server.api.handle(req)
        except Exception as exc:  # noqa: BLE001 - report, never kill the server thread
            log.exception("internal error on %s %s", self.command, self.path)
            resp = Response(500, raw=f"stand-in internal error: {exc}".encode())
        self._send(resp)

    do_GET = do_PUT = do_DELETE = do_POST = _serve

    def _send(self, resp: Response) -> None:
        if resp.raw is not None:
            payload, ctype = resp.raw, resp.content_type or "text/plain; charset=utf-8"
        else:
            payload, ctype = json.dumps(resp.body).encode(), "application/json"
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in resp.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s " + fmt, self.client_address[0], *args)


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 resets connections when many clients connect at
    # once (Consul, in Go, listens with the system's somaxconn)
    request_queue_size = 1024

    def __init__(self, addr: tuple[str, int], api: ConsulHttpApi,
                 agent_node_for: Callable[[str], str]):
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        super().__init__(addr, _Handler)
        self.api = api
        self.agent_node_for = agent_node_for

    def handle_error(self, request, client_address) -> None:
        # clients that hang up mid-answer (a cancelled blocking query) are not errors
        log.debug("connection from %s ended with an error", client_address, exc_info=True)
