"""KV endpoints and /v1/txn on top of kv.py (api-docs/kv.mdx, api-docs/txn.mdx)."""

from __future__ import annotations

import base64
import binascii

from . import kv
from .errors import ConsulError, bad_request, rpc_error
from .fields import get
from .txn_catalog import CATALOG_KINDS, CatalogOpError, apply_catalog_op, parse_catalog_op

MAX_TXN_OPS = 128
MAX_CACHED_PREFIXES = 1024  # prefixes whose index is kept (those blocking reads watch)
_WRITE_VERBS = {"set", "cas", "lock", "unlock", "delete", "delete-tree", "delete-cas"}
_READ_VERBS = {"get", "get-or-empty", "get-tree", "check-index", "check-session",
               "check-not-exists"}


class KVMixin:
    kv: kv.KVSpace
    prefix_indexes: dict[str, int]
    sessions: dict[str, dict]
    lock_delay: dict[str, float]

    # --- reads ---------------------------------------------------------------------------
    def kv_index(self, key: str, recurse: bool, keys: bool) -> int:
        """The index GET /v1/kv/:key answers, without building the answer (what a blocking
        query checks after each write)."""
        table = self.table_index("kvs", "tombstones")
        if keys or recurse:
            return self._prefix_index(key, table)
        entry = self.kv.entries.get(key)
        return entry["ModifyIndex"] if entry else table

    def _prefix_index(self, prefix: str, table: int) -> int:
        """Max ModifyIndex or tombstone under `prefix`: computed once (a bisect and a walk of
        the prefix), then kept up to date by note_kv_changes at each write, so that a
        blocking prefix read costs nothing per unrelated write."""
        if prefix == "":
            return table
        cache = self.prefix_indexes
        if prefix not in cache:
            if len(cache) >= MAX_CACHED_PREFIXES:
                cache.clear()
            cache[prefix] = kv.list_index(self.kv, prefix, 0)
        return cache[prefix] or table

    def note_kv_changes(self, changed: list, index: int | None) -> None:
        """At the end of a write: the cached prefix indexes move for the keys it touched."""
        if not self.prefix_indexes or index is None:
            return
        for table, key in changed:
            if table == "kv" or table == "tombstones":
                for prefix in self.prefix_indexes:
                    if key.startswith(prefix):
                        self.prefix_indexes[prefix] = index

    def kv_read(self, key: str, recurse: bool, keys: bool, separator: str):
        """(index, entries|keys|None) for GET /v1/kv/:key."""
        table = self.table_index("kvs", "tombstones")
        if keys or recurse:
            idx = self._prefix_index(key, table)
            if keys:
                return idx, kv.list_keys(self.kv, key, separator)
            return idx, kv.under(self.kv, key)
        entry = self.kv.entries.get(key)
        return (entry["ModifyIndex"], [entry]) if entry else (table, None)

    # --- writes --------------------------------------------------------------------------
    def kv_put(self, key: str, value: bytes, flags: int, cas: int | None,
               acquire: str | None, release: str | None) -> bool:
        _check_key_and_value(key, value)
        with self.write():
            if release is not None:
                return self._kv_apply("unlock", key, value, flags, release, 0)
            if acquire is not None:
                self._require_session(acquire)
                if self._lock_delayed(key):
                    return False
                return self._kv_apply("lock", key, value, flags, acquire, 0)
            if cas is not None:
                return self._kv_apply("cas", key, value, flags, "", cas)
            return self._kv_apply("set", key, value, flags, "", 0)

    def kv_delete(self, key: str, recurse: bool, cas: int | None) -> bool:
        with self.write():
            if recurse:
                return self._kv_apply("delete-tree", key, None, 0, "", 0)
            if cas is not None:
                return self._kv_apply("delete-cas", key, None, 0, "", cas)
            return self._kv_apply("delete", key, None, 0, "", 0)

    def _kv_apply(self, verb, key, value, flags, session, index) -> bool:
        ok = _apply_verb(self.kv, verb, key, value, flags, session, index, self._peek_index())
        if ok:
            self.touch("kvs", "tombstones")
        return ok

    def _peek_index(self) -> int:
        return self._write_index if self._write_index is not None else self.index + 1

    def _require_session(self, session_id: str) -> None:
        if session_id not in self.sessions:
            raise rpc_error(f'invalid session "{session_id}"')

    def _lock_delayed(self, key: str) -> bool:
        until = self.lock_delay.get(key)
        return until is not None and until > self.clock()

    # --- transactions --------------------------------------------------------------------
    def txn(self, ops: object) -> tuple[int, dict]:
        """(HTTP status, body): 200 with Results, or 409 with Errors and nothing applied."""
        parsed = _parse_txn(ops)
        errors = self._txn_precheck(parsed)
        if errors:
            return 409, {"Results": None, "Errors": errors}
        catalog = any(op["Kind"] != "KV" for op in parsed)
        with self.write():
            # the ops apply in place; a failure rolls back only the keys they touched (a
            # savepoint), so a transaction costs its ops, not the size of the KV table
            tables = self._txn_tables(catalog)
            stamps = dict(self.tables) if catalog else None
            for table in tables:
                table.savepoint()
            idx = self._peek_index()
            results, errors = [], []
            try:
                for i, op in enumerate(parsed):
                    try:
                        if op["Kind"] == "KV":
                            results.extend(_txn_op(self.kv, op, idx))
                        else:
                            results.extend(apply_catalog_op(self, op))
                    except (TxnOpError, CatalogOpError) as exc:
                        errors.append({"OpIndex": i, "What": str(exc)})
            except BaseException:
                errors.append({"OpIndex": -1, "What": "internal error"})
                raise
            finally:
                for table in tables:
                    if errors:
                        table.rollback()
                    else:
                        table.release()
                if errors and stamps is not None:  # the catalog ops' table indexes go back
                    self.tables.clear()
                    self.tables.update(stamps)
            if errors:
                return 409, {"Results": None, "Errors": errors}
            if any(op["Kind"] == "KV" and op["Verb"] in _WRITE_VERBS for op in parsed):
                self.touch("kvs", "tombstones")
            return 200, {"Results": results, "Errors": None}

    def _txn_tables(self, catalog: bool) -> list:
        """The tables a transaction may change: KV only, or (with catalog ops, which also
        invalidate sessions and release their locks) every logged table."""
        if not catalog:
            return [self.kv.entries, self.kv.tombstones]
        return [self.kv.entries, self.kv.tombstones, self.sessions, self.lock_delay,
                self.nodes, self.services, self.checks, self.check_defs, self.critical_since]

    def _txn_precheck(self, parsed: list[dict]) -> list[dict]:
        errors = []
        for i, op in enumerate(parsed):
            if op["Verb"] != "lock":
                continue
            if op["Session"] not in self.sessions:
                errors.append({"OpIndex": i, "What": f'invalid session "{op["Session"]}"'})
            elif self._lock_delayed(op["Key"]):
                errors.append({"OpIndex": i,
                               "What": f'failed to lock key "{op["Key"]}" due to lock delay'})
        return errors


def txn_is_read_only(ops: object) -> bool:
    """txn.mdx: a transaction without write operations is served like a read (consistency
    modes, X-Consul-KnownLeader and X-Consul-LastContact, no blocking)."""
    return isinstance(ops, list) and all(
        isinstance(op, dict) and _op_body(op) is not None
        and get(_op_body(op)[1], "Verb") not in _WRITE_VERBS for op in ops)


def _op_body(op: dict) -> tuple[str, dict] | None:
    """(kind, body) of one txn op: KV, Node, Service or Check."""
    for kind in ("KV", *CATALOG_KINDS):
        body = get(op, kind)
        if isinstance(body, dict):
            return kind, body
    return None


class TxnOpError(Exception):
    pass


def _check_key_and_value(key: str, value: bytes | None) -> None:
    if not key:
        raise bad_request("Missing key name")
    if value is not None and len(value) > kv.MAX_VALUE_BYTES:
        raise ConsulError(413, f"Value exceeds {kv.MAX_VALUE_BYTES} byte limit")


def _apply_verb(space, verb, key, value, flags, session, index, idx) -> bool:
    if verb == "set":
        return kv.kv_set(space, key, value, flags, idx)
    if verb == "cas":
        return kv.kv_cas(space, key, value, flags, index, idx)
    if verb == "lock":
        return kv.kv_lock(space, key, value, flags, session, idx)
    if verb == "unlock":
        return kv.kv_unlock(space, key, value, flags, session, idx)
    if verb == "delete":
        return kv.kv_delete(space, key, idx)
    if verb == "delete-tree":
        return kv.kv_delete_tree(space, key, idx)
    if verb == "delete-cas":
        return kv.kv_delete_cas(space, key, index, idx)
    raise AssertionError(verb)


def _parse_txn(ops: object) -> list[dict]:
    if not isinstance(ops, list):
        raise bad_request("Failed to parse body: expected a JSON array of operations")
    if len(ops) > MAX_TXN_OPS:
        raise ConsulError(413, f"Transaction contains too many operations "
                               f"({len(ops)} > {MAX_TXN_OPS})")
    return [_parse_txn_op(i, op) for i, op in enumerate(ops)]


def _parse_txn_op(i: int, op: object) -> dict:
    found = _op_body(op) if isinstance(op, dict) else None
    if found is None:
        raise bad_request(f"op {i}: expected one of KV, Node, Service, Check (the stand-in "
                          f"does not model Intention or Session ops)")
    kind, body = found
    if kind != "KV":
        return parse_catalog_op(i, kind, body)
    verb = get(body, "Verb", "")
    try:
        raw = get(body, "Value")
        value = base64.b64decode(raw, validate=True) if raw is not None else None
    except (binascii.Error, TypeError) as exc:
        raise bad_request(f"op {i}: KV.Value must be base64 ({exc})") from exc
    key = get(body, "Key", "")
    if not key and verb not in ("delete-tree", "get-tree"):
        raise bad_request(f"op {i}: Missing key name")
    _check_key_and_value(key or "-", value)
    return {"Kind": "KV", "Verb": verb, "Key": key, "Value": value,
            "Flags": int(get(body, "Flags") or 0), "Index": int(get(body, "Index") or 0),
            "Session": get(body, "Session") or ""}


def _txn_op(space: kv.KVSpace, op: dict, idx: int) -> list[dict]:
    """Apply one op; returns its results (state/txn.go txnKVS), raises TxnOpError on failure."""
    verb, key = op["Verb"], op["Key"]
    if verb in _READ_VERBS:
        return _txn_read(space, op)
    if verb not in _WRITE_VERBS:
        # state/txn.go: an unknown verb is an op error (409, rolled back), not a bad request
        raise TxnOpError(f'unknown KV verb "{verb}"')
    ok = _apply_verb(space, verb, key, op["Value"], op["Flags"], op["Session"], op["Index"], idx)
    if not ok:
        raise TxnOpError(_FAILURES[verb].format(key=key))
    if verb.startswith("delete"):
        return []
    return [{"KV": kv.to_json(space.entries[key], with_value=False)}]


_FAILURES = {
    "cas": 'failed to set key "{key}", index is stale',
    "lock": 'failed to lock key "{key}", lock is already held',
    "unlock": 'failed to unlock key "{key}", lock isn\'t held, or is held by another session',
    "delete-cas": 'failed to delete key "{key}", index is stale',
}


def _txn_read(space: kv.KVSpace, op: dict) -> list[dict]:
    verb, key = op["Verb"], op["Key"]
    if verb == "get-tree":
        return [{"KV": kv.to_json(e)} for e in kv.under(space, key)]
    entry = space.entries.get(key)
    if verb == "check-not-exists":
        if entry is not None:
            raise TxnOpError(f'key "{key}" exists')
        return []
    if entry is None:
        if verb == "get-or-empty":
            return [{"KV": None}]
        raise TxnOpError(f'key "{key}" doesn\'t exist')
    if verb == "check-index" and entry["ModifyIndex"] != op["Index"]:
        raise TxnOpError(f'current modify index {entry["ModifyIndex"]} != {op["Index"]}')
    if verb == "check-session" and entry["Session"] != op["Session"]:
        raise TxnOpError(f'current session "{entry["Session"]}" != "{op["Session"]}"')
    return [{"KV": kv.to_json(entry, with_value=verb in ("get", "get-or-empty"))}]
