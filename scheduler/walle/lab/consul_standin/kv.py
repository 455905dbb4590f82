"""Consul KV semantics as pure functions over a key->entry dict and a tombstone dict.

Mirrors agent/consul/state/kvs.go. Entries are replaced, never mutated: the write-ahead log
logs a write as the new value of each key it touched, and a failed transaction rolls back by
putting the old values back (journal.TrackedDict savepoints). Each function takes the
Raft-like index of the write it belongs to.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

MAX_VALUE_BYTES = 512 * 1024


@dataclass
class KVSpace:
    entries: dict[str, dict] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)


def new_entry(key: str, value: bytes | None, flags: int, idx: int, **rest) -> dict:
    entry = {"Key": key, "Value": value, "Flags": flags, "CreateIndex": idx,
             "ModifyIndex": idx, "LockIndex": 0, "Session": ""}
    entry.update(rest)
    return entry


def to_json(entry: dict, with_value: bool = True) -> dict:
    value = entry["Value"] if with_value else None
    out = {k: entry[k] for k in ("LockIndex", "Key", "Flags", "CreateIndex", "ModifyIndex")}
    out["Value"] = base64.b64encode(value).decode() if value is not None else None
    if entry["Session"]:
        out["Session"] = entry["Session"]
    return out


def kv_set(space: KVSpace, key: str, value: bytes | None, flags: int, idx: int) -> bool:
    """Plain set: keeps CreateIndex, LockIndex and the lock holder (a PUT works on locked keys)."""
    old = space.entries.get(key)
    if old is None:
        space.entries[key] = new_entry(key, value, flags, idx)
    else:
        space.entries[key] = {**old, "Value": value, "Flags": flags, "ModifyIndex": idx}
    return True


def kv_cas(space: KVSpace, key: str, value: bytes | None, flags: int, cas: int, idx: int) -> bool:
    """cas=0: only if absent; otherwise the entry's ModifyIndex must equal cas."""
    old = space.entries.get(key)
    if cas == 0 and old is not None:
        return False
    if cas != 0 and (old is None or old["ModifyIndex"] != cas):
        return False
    return kv_set(space, key, value, flags, idx)


def kv_lock(space: KVSpace, key: str, value: bytes | None, flags: int, session: str,
            idx: int) -> bool:
    """Acquire: free key or same holder; LockIndex grows only on a new acquisition."""
    old = space.entries.get(key)
    if old is None:
        space.entries[key] = new_entry(key, value, flags, idx, LockIndex=1, Session=session)
        return True
    if old["Session"] == session:
        space.entries[key] = {**old, "Value": value, "Flags": flags, "ModifyIndex": idx}
        return True
    if old["Session"]:
        return False
    space.entries[key] = {**old, "Value": value, "Flags": flags, "ModifyIndex": idx,
                          "LockIndex": old["LockIndex"] + 1, "Session": session}
    return True


def kv_unlock(space: KVSpace, key: str, value: bytes | None, flags: int, session: str,
              idx: int) -> bool:
    old = space.entries.get(key)
    if old is None or old["Session"] != session:
        return False
    space.entries[key] = {**old, "Value": value, "Flags": flags, "ModifyIndex": idx,
                          "Session": ""}
    return True


def release_session(space: KVSpace, key: str, idx: int) -> None:
    """Session invalidation with behavior=release: clear the holder, keep the value."""
    old = space.entries[key]
    space.entries[key] = {**old, "Session": "", "ModifyIndex": idx}


def kv_delete(space: KVSpace, key: str, idx: int) -> bool:
    if space.entries.pop(key, None) is not None:
        space.tombstones[key] = idx
    return True


def kv_delete_tree(space: KVSpace, prefix: str, idx: int) -> bool:
    for key in list(_keys_under(space.entries, prefix)):
        kv_delete(space, key, idx)
    return True


def kv_delete_cas(space: KVSpace, key: str, cas: int, idx: int) -> bool:
    """Like Consul: a missing key counts as deleted (true); a stale index fails."""
    old = space.entries.get(key)
    if old is None:
        return True
    if old["ModifyIndex"] != cas:
        return False
    return kv_delete(space, key, idx)


def _keys_under(table: dict, prefix: str):
    """Keys of `table` under `prefix`, in order: a bisect when the table keeps its keys
    sorted (journal.SortedTrackedDict, the store's tables), else a sort (plain dicts)."""
    keys_from = getattr(table, "keys_from", None)
    if keys_from is not None:
        return keys_from(prefix)
    return (k for k in sorted(table) if k.startswith(prefix))


def under(space: KVSpace, prefix: str) -> list[dict]:
    return [space.entries[k] for k in _keys_under(space.entries, prefix)]


def list_index(space: KVSpace, prefix: str, table_index: int) -> int:
    """Index of a recurse/keys read: max ModifyIndex or tombstone under the prefix."""
    if prefix == "":
        return table_index
    best = max((e["ModifyIndex"] for e in under(space, prefix)), default=0)
    best = max([best, *(space.tombstones[k] for k in _keys_under(space.tombstones, prefix))])
    return best or table_index


def list_keys(space: KVSpace, prefix: str, separator: str) -> list[str]:
    keys: list[str] = []
    for entry in under(space, prefix):
        key = entry["Key"]
        if separator:
            cut = key.find(separator, len(prefix))
            if cut >= 0:
                key = key[: cut + len(separator)]
        if not keys or keys[-1] != key:
            keys.append(key)
    return keys
