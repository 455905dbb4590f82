"""Secret values in Consul KV, under their own prefix (walle/secrets/<path>).

Kept apart from the job records: a job stores only the reference, the leader reads the value
at placement time. An ACL policy can give the scheduler read on this prefix and operators
write, without either touching jobs. Values are never logged here."""

from __future__ import annotations

from walle.adapters.consul.api import ConsulApi
from walle.naming import secret_key


def read_secret(api: ConsulApi, path: str) -> bytes | None:
    """The raw value of walle/secrets/<path>, or None when the key does not exist."""
    key = secret_key(path)
    _, entry = api.call(f"read {key}", lambda: api.client.kv.get(key))
    if not entry:
        return None
    return entry.get("Value") or b""
