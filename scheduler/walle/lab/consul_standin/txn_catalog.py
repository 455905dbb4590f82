"""Catalog operations in /v1/txn (api-docs/txn.mdx: Node, Service and Check ops;
agent/consul/state/txn.go txnNode/txnService/txnCheck).

Verbs: set, cas (the entry's ModifyIndex must equal Index; 0 = must not exist), get, delete,
delete-cas. A Service or Check op on a node that does not exist fails ("Missing node
registration"), a Check naming a ServiceID that is not registered fails ("Missing service
registration"), as the state store's ensure* functions do. The whole transaction then rolls
back (kvstore.txn holds a savepoint on every table).
"""

from __future__ import annotations

from collections.abc import Callable

from .catalog import STATES, make_check, service_record
from .errors import bad_request
from .fields import as_dict, get

CATALOG_KINDS = ("Node", "Service", "Check")
_VERBS = ("set", "cas", "get", "delete", "delete-cas")


class CatalogOpError(Exception):
    """A catalog operation of a /v1/txn body that Consul would refuse (its message says why)."""


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


def _entry_op(verb: str, index: int, current: dict | None, what: str, result: str,
              delete: Callable[[], object], put: Callable[[], dict]) -> list[dict]:
    """The verbs' common shape for one catalog entry (`what` names it in errors)."""
    if verb == "get":
        if current is None:
            raise CatalogOpError(f"{what} doesn't exist")
        return [{result: current}]
    if verb in ("cas", "delete-cas") and not _cas_ok(current, index):
        action = "delete" if verb == "delete-cas" else "set"
        raise CatalogOpError(f"failed to {action} {what}, index is stale")
    if verb in ("delete", "delete-cas"):
        delete()
        return []
    return [{result: put()}]


def _node_op(store, verb: str, name: str, entry: dict, index: int) -> list[dict]:
    def put() -> dict:
        address = get(entry, "Address") or ""
        if not address:
            raise CatalogOpError("Must provide address")
        store.ensure_node(name, address, as_dict(get(entry, "Meta"), "Node.Meta"),
                          get(entry, "TaggedAddresses"))
        return store.nodes[name]
    return _entry_op(verb, index, store.nodes.get(name), f'node "{name}"', "Node",
                     lambda: store.delete_node(name), put)


def _service_op(store, verb: str, node: str, entry: dict, index: int) -> list[dict]:
    service_id = get(entry, "ID") or get(entry, "Service") or ""

    def put() -> dict:
        store.put_service(node, service_record(entry, "Service"))
        return store.services[(node, service_id)]
    return _entry_op(verb, index, store.services.get((node, service_id)),
                     f'service "{service_id}" on node "{node}"', "Service",
                     lambda: store.delete_service(node, service_id), put)


def _check_op(store, verb: str, node: str, entry: dict, index: int) -> list[dict]:
    check_id = get(entry, "CheckID") or get(entry, "Name") or ""
    if not check_id:
        raise CatalogOpError("Check: Must provide CheckID or Name")

    def put() -> dict:
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
        return store.checks[(node, check_id)]
    return _entry_op(verb, index, store.checks.get((node, check_id)),
                     f'check "{check_id}" on node "{node}"', "Check",
                     lambda: store.delete_check(node, check_id), put)
