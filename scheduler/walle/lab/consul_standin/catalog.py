"""Catalog and health (api-docs/catalog.mdx, health.mdx; state/catalog.go).

Nodes, service instances and checks keyed by node. Index rules follow the state store: the
`nodes`, `services` and `checks` tables, plus one `service.<name>` index that moves whenever
anything an instance of that service reports changes (its node, its checks, its node's checks).
"""

from __future__ import annotations

import uuid

from .errors import bad_request, rpc_error
from .fields import as_dict, get
from .sessions import SERF_CHECK

SERF_ALIVE = "Agent alive and reachable"
SERF_FAILED = "Agent not live or unreachable"
STATES = ("passing", "warning", "critical")
_CHECK_FIELDS = ("Name", "Status", "Notes", "ServiceID", "ServiceName", "ServiceTags", "Type",
                 "Definition")


def node_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"walle-standin.{name}"))


class CatalogMixin:
    datacenter: str
    nodes: dict[str, dict]
    services: dict[tuple[str, str], dict]
    checks: dict[tuple[str, str], dict]
    critical_since: dict[tuple[str, str], float]

    # --- nodes ---------------------------------------------------------------------------
    def ensure_node(self, name: str, address: str, meta: dict | None = None,
                    tagged: dict | None = None) -> None:
        old = self.nodes.get(name)
        new = {"ID": old["ID"] if old else node_id(name), "Node": name, "Address": address,
               "Datacenter": self.datacenter,
               "TaggedAddresses": tagged or {"lan": address, "lan_ipv4": address,
                                             "wan": address, "wan_ipv4": address},
               "Meta": {str(k): str(v) for k, v in (meta or {}).items()}}
        if old and all(old[k] == v for k, v in new.items()):
            return
        idx = self.touch("nodes")
        self.nodes[name] = {**new, "CreateIndex": old["CreateIndex"] if old else idx,
                            "ModifyIndex": idx}
        self._touch_services_on(name)

    def delete_node(self, name: str) -> None:
        if name not in self.nodes:
            return
        for (node, sid) in [k for k in self.services if k[0] == name]:
            self.delete_service(node, sid)
        for (node, cid) in [k for k in self.checks if k[0] == name]:
            self.delete_check(node, cid)
        self.invalidate_sessions_of_node(name)
        del self.nodes[name]
        self.touch("nodes", "services", "checks")

    def _touch_services_on(self, node: str) -> None:
        names = {s["Service"] for (n, _), s in self.services.items() if n == node}
        self.touch(*(f"service.{name}" for name in names))

    # --- services ------------------------------------------------------------------------
    def put_service(self, node: str, service: dict) -> None:
        key = (node, service["ID"])
        old = self.services.get(key)
        if old and all(old.get(k) == v for k, v in service.items()):
            return
        idx = self.touch("services", f"service.{service['Service']}")
        if old and old["Service"] != service["Service"]:
            self.touch(f"service.{old['Service']}")
        self.services[key] = {**service, "CreateIndex": old["CreateIndex"] if old else idx,
                              "ModifyIndex": idx}

    def delete_service(self, node: str, service_id: str) -> bool:
        service = self.services.pop((node, service_id), None)
        if service is None:
            return False
        for (n, cid), check in list(self.checks.items()):
            if n == node and check["ServiceID"] == service_id:
                self.delete_check(n, cid)
        self.touch("services", f"service.{service['Service']}")
        return True

    # --- checks --------------------------------------------------------------------------
    def put_check(self, check: dict) -> None:
        """Store a check; only real changes move indexes (output-only updates are silent,
        like Consul's check_update_interval); going critical invalidates bound sessions."""
        key = (check["Node"], check["CheckID"])
        old = self.checks.get(key)
        if old and all(old.get(k) == check.get(k) for k in _CHECK_FIELDS):
            self.checks[key] = {**old, "Output": check.get("Output", "")}
            return
        idx = self.touch("checks")
        self.checks[key] = {**check, "CreateIndex": old["CreateIndex"] if old else idx,
                            "ModifyIndex": idx}
        self._touch_check_services(check)
        if check["Status"] == "critical":
            self.critical_since.setdefault(key, self.clock())
            self.invalidate_sessions_of_check(*key)
        else:
            self.critical_since.pop(key, None)

    def delete_check(self, node: str, check_id: str) -> bool:
        check = self.checks.pop((node, check_id), None)
        self.critical_since.pop((node, check_id), None)
        self.check_defs.pop((node, check_id), None)
        if check is None:
            return False
        self.touch("checks")
        self._touch_check_services(check)
        self.invalidate_sessions_of_check(node, check_id)
        return True

    def set_check_status(self, node: str, check_id: str, status: str, output: str) -> None:
        check = self.checks.get((node, check_id))
        if check is not None:
            self.put_check({**check, "Status": status, "Output": output})

    def _touch_check_services(self, check: dict) -> None:
        if check["ServiceID"]:
            service = self.services.get((check["Node"], check["ServiceID"]))
            if service:
                self.touch(f"service.{service['Service']}")
        else:
            self._touch_services_on(check["Node"])

    def set_serf_health(self, node: str, alive: bool) -> None:
        self.put_check(make_check(node, SERF_CHECK, "Serf Health Status",
                                  "passing" if alive else "critical",
                                  output=SERF_ALIVE if alive else SERF_FAILED))

    # --- catalog register / deregister ---------------------------------------------------
    def catalog_register(self, body: dict) -> bool:
        """Consul validates a catalog registration in the server's Catalog.Register RPC
        (agent/consul/catalog_endpoint.go), so its refusals reach HTTP as 500s."""
        name, address = get(body, "Node"), get(body, "Address")
        if not name:
            raise rpc_error("Must provide node")
        skip = bool(get(body, "SkipNodeUpdate"))
        if not address and not skip:
            raise rpc_error("Must provide address if SkipNodeUpdate is not set")
        raw_service = as_dict(get(body, "Service"), "Service")
        if raw_service and not get(raw_service, "Service"):
            raise rpc_error("Must provide service name (Service.Service) when service ID is "
                            "provided")
        if raw_service and get(raw_service, "Address") in ANY_ADDRESSES:
            raise rpc_error("Invalid service address")
        checks = [c for c in [get(body, "Check"), *(get(body, "Checks") or [])] if c]
        new_service_id = (get(raw_service, "ID") or get(raw_service, "Service")) \
            if raw_service else None
        for raw in checks:
            service_id = get(as_dict(raw, "Check"), "ServiceID")
            if service_id and service_id != new_service_id and \
                    (name, service_id) not in self.services:
                # state store ensureCheckTxn: the whole registration fails
                raise rpc_error("Missing service registration")
        with self.write():
            if not skip or name not in self.nodes:
                self.ensure_node(name, address or "", as_dict(get(body, "NodeMeta"), "NodeMeta"),
                                 get(body, "TaggedAddresses"))
            if raw_service:
                self.put_service(name, service_record(raw_service, "Service"))
            for raw in checks:
                self.put_check(self._catalog_check(name, as_dict(raw, "Check")))
        return True

    def _catalog_check(self, node: str, raw: dict) -> dict:
        check_id = get(raw, "CheckID") or get(raw, "Name")
        if not check_id:
            raise bad_request("Check: Must provide CheckID or Name")
        status = get(raw, "Status") or "critical"
        if status not in STATES:
            raise bad_request(f"Check: invalid Status '{status}' (passing|warning|critical)")
        service_id = get(raw, "ServiceID") or ""
        return make_check(node, check_id, get(raw, "Name") or check_id, status,
                          notes=get(raw, "Notes") or "", output=get(raw, "Output") or "",
                          service=self.services.get((node, service_id)),
                          definition=get(raw, "Definition") or {})

    def catalog_deregister(self, body: dict) -> bool:
        name = get(body, "Node")
        if not name:
            raise rpc_error("Must provide node")
        with self.write():
            if get(body, "ServiceID"):
                self.delete_service(name, get(body, "ServiceID"))
            elif get(body, "CheckID"):
                self.delete_check(name, get(body, "CheckID"))
            else:
                self.delete_node(name)
        return True

    # --- reads ---------------------------------------------------------------------------
    def instances(self, service: str | None = None, tags: list[str] | None = None,
                  node_meta: dict[str, str] | None = None) -> list[tuple[dict, dict]]:
        """(node, service) pairs sorted by node then ID, filtered like ?tag= and ?node-meta=."""
        if service is not None and not self.tables.get(f"service.{service}"):
            return []  # never registered (an index probe): no walk of every service
        out = []
        for (node_name, _), svc in sorted(self.services.items()):
            node = self.nodes.get(node_name)
            if node is None or (service is not None and svc["Service"] != service):
                continue
            if tags and not all(t in svc["Tags"] for t in tags):
                continue
            if node_meta and not meta_matches(node, node_meta):
                continue
            out.append((node, svc))
        return out

    def checks_of(self, node: str, service_id: str) -> list[dict]:
        return [c for (n, _), c in sorted(self.checks.items())
                if n == node and c["ServiceID"] in ("", service_id)]

    def service_index(self, name: str) -> int:
        return self.tables.get(f"service.{name}") or self.table_index("services")

    def healthy_for_dns(self, node: str, service_id: str, only_passing: bool = False) -> bool:
        bad = ("critical", "warning") if only_passing else ("critical",)
        return all(c["Status"] not in bad for c in self.checks_of(node, service_id))


ANY_ADDRESSES = ("0.0.0.0", "::", "[::]")


def meta_matches(node: dict, wanted: dict[str, str]) -> bool:
    return all(node["Meta"].get(k) == v for k, v in wanted.items())


def make_check(node: str, check_id: str, name: str, status: str, *, notes: str = "",
               output: str = "", service: dict | None = None, check_type: str = "",
               definition: dict | None = None) -> dict:
    return {"Node": node, "CheckID": check_id, "Name": name, "Status": status, "Notes": notes,
            "Output": output, "ServiceID": service["ID"] if service else "",
            "ServiceName": service["Service"] if service else "",
            "ServiceTags": list(service["Tags"]) if service else [], "Type": check_type,
            "Definition": definition or {}}


def _weights(raw: object) -> dict:
    """Weights decoded like Consul's struct (keys case-insensitive, a missing one 0); absent
    weights default to Passing 1, Warning 1 (structs.ServiceDefinition.NodeService)."""
    if raw is None:
        return {"Passing": 1, "Warning": 1}
    weights = as_dict(raw, "Weights")
    return {"Passing": get(weights, "Passing", 0), "Warning": get(weights, "Warning", 0)}


def service_record(raw: dict, name_field: str) -> dict:
    """A service as stored, from an agent (`Name`) or catalog (`Service`) definition."""
    name = get(raw, name_field) or get(raw, "Name")
    if not name:
        raise bad_request("Missing service name")
    port = get(raw, "Port") or 0
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise bad_request(f"Port: invalid port {port!r}; use an integer 0-65535")
    tags = get(raw, "Tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise bad_request("Tags: expected a list of strings")
    return {"ID": get(raw, "ID") or name, "Service": name, "Tags": tags,
            "Address": get(raw, "Address") or "",
            "TaggedAddresses": get(raw, "TaggedAddresses") or {},
            "Meta": {str(k): str(v) for k, v in as_dict(get(raw, "Meta"), "Meta").items()},
            "Port": port, "Weights": _weights(get(raw, "Weights")),
            "EnableTagOverride": bool(get(raw, "EnableTagOverride"))}
