"""Catalog operations in /v1/txn (api-docs/txn.mdx: Node, Service and Check ops;
agent/consul/state/txn.go txnNode/txnService/txnCheck).

Verbs: set, cas (the entry's ModifyIndex must equal Index; 0 = must not exist), get, delete,
delete-cas. A Service or Check op on a node that does not exist fails ("Missing node
registration"), a Check naming a ServiceID that is not registered fails ("Missing service
registration"), as the state store's ensure* functions do. The whole transaction then rolls
back (kvstore.txn holds a savepoint on every table).
"""

from __future__ import annotations

from .catalog import STATES, make_check, service_record
from .errors import bad_request
from .fields import as_dict, get

CATALOG_KINDS = ("Node", "Service", "Check")
_VERBS = ("set", "cas", "get", "delete", "delete-cas")


class CatalogOpError(Exception):
    pass


def parse_catalog_op(i: int, kind: str, body: object) -> dict:
    """One op's fields, checked like Consul's decoding (a bad op is a 400 before anything
    is applied)."""
    body = as_dict(body, f"op {i}: {kind}")
    verb = get(body, "Verb", "")
    if verb not in _VERBS:
        raise bad_request(f"op {i}: unknown {kind} verb {verb!r} (use {', '.join(_VERBS)})")
    if kind == "Node":
        node = as_dict(get(body, "Node"), f"op {i}: Node.Node")
        name = get(node, "Node") or ""
        entry = node
    elif kind == "Service":
        name = get(body, "Node") or ""
        entry = as_dict(get(body, "Service"), f"op {i}: Service.Service")
    else:
        entry = as_dict(get(body, "Check"), f"op {i}: Check.Check")
        name = get(entry, "Node") or ""
    if not name:
        raise bad_request(f"op {i}: {kind} op must name its Node")
    index = get(entry, "ModifyIndex") or 0
    return {"Kind": kind, "Verb": verb, "Node": name, "Entry": entry, "Index": int(index)}


def apply_catalog_op(store, op: dict) -> list[dict]:
    """Apply one parsed op to the store (inside its write); its results, or CatalogOpError."""
    kind, verb, name, entry = op["Kind"], op["Verb"], op["Node"], op["Entry"]
    if kind == "Node":
        return _node_op(store, verb, name, entry, op["Index"])
    if name not in store.nodes:
        raise CatalogOpError("Missing node registration")
    if kind == "Service":
        return _service_op(store, verb, name, entry, op["Index"])
    return _check_op(store, verb, name, entry, op["Index"])


def _cas_ok(current: dict | None, index: int) -> bool:
    if index == 0:
        return current is None
    return current is not None and current["ModifyIndex"] == index


def _node_op(store, verb: str, name: str, entry: dict, index: int) -> list[dict]:
    current = store.nodes.get(name)
    if verb == "get":
        if current is None:
            raise CatalogOpError(f'node "{name}" doesn\'t exist')
        return [{"Node": current}]
    if verb in ("cas", "delete-cas") and not _cas_ok(current, index):
        raise CatalogOpError(f'failed to {"delete" if verb == "delete-cas" else "set"} node '
                             f'"{name}", index is stale')
    if verb in ("delete", "delete-cas"):
        store.delete_node(name)
        return []
    address = get(entry, "Address") or ""
    if not address:
        raise CatalogOpError("Must provide address")
    store.ensure_node(name, address, as_dict(get(entry, "Meta"), "Node.Meta"),
                      get(entry, "TaggedAddresses"))
    return [{"Node": store.nodes[name]}]


def _service_op(store, verb: str, node: str, entry: dict, index: int) -> list[dict]:
    service_id = get(entry, "ID") or get(entry, "Service") or ""
    current = store.services.get((node, service_id))
    if verb == "get":
        if current is None:
            raise CatalogOpError(f'service "{service_id}" on node "{node}" doesn\'t exist')
        return [{"Service": current}]
    if verb in ("cas", "delete-cas") and not _cas_ok(current, index):
        raise CatalogOpError(f'failed to {"delete" if verb == "delete-cas" else "set"} '
                             f'service "{service_id}" on node "{node}", index is stale')
    if verb in ("delete", "delete-cas"):
        store.delete_service(node, service_id)
        return []
    store.put_service(node, service_record(entry, "Service"))
    return [{"Service": store.services[(node, service_id)]}]


def _check_op(store, verb: str, node: str, entry: dict, index: int) -> list[dict]:
    check_id = get(entry, "CheckID") or get(entry, "Name") or ""
    if not check_id:
        raise CatalogOpError("Check: Must provide CheckID or Name")
    current = store.checks.get((node, check_id))
    if verb == "get":
        if current is None:
            raise CatalogOpError(f'check "{check_id}" on node "{node}" doesn\'t exist')
        return [{"Check": current}]
    if verb in ("cas", "delete-cas") and not _cas_ok(current, index):
        raise CatalogOpError(f'failed to {"delete" if verb == "delete-cas" else "set"} '
                             f'check "{check_id}" on node "{node}", index is stale')
    if verb in ("delete", "delete-cas"):
        store.delete_check(node, check_id)
        return []
    status = get(entry, "Status") or "critical"
    if status not in STATES:
        raise CatalogOpError(f"Check: invalid Status '{status}' (passing|warning|critical)")
    service_id = get(entry, "ServiceID") or ""
    service = store.services.get((node, service_id)) if service_id else None
    if service_id and service is None:
        raise CatalogOpError("Missing service registration")
    store.put_check(make_check(node, check_id, get(entry, "Name") or check_id, status,
                               notes=get(entry, "Notes") or "",
                               output=get(entry, "Output") or "", service=service,
                               definition=get(entry, "Definition") or {}))
    return [{"Check": store.checks[(node, check_id)]}]
