"""User events (gossip, best effort: no ordering, no delivery guarantee, not stored; keep the
payload tiny). Walle fires `walle-drain` with the node name when an operator drains a node;
the durable record is the KV key walle/nodes/<node>/drain, the event only wakes watchers."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from walle.adapters.consul.api import ConsulApi
from walle.adapters.consul.errors import ConsulError
from walle.adapters.consul.watch import Watch

DRAIN_EVENT = "walle-drain"
MAX_PAYLOAD = 512  # bytes; Consul's limit depends on gossip settings, stay far below it


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    payload: bytes
    ltime: int


def fire_event(api: ConsulApi, name: str, payload: bytes | str = b"", *,
               node: str | None = None, service: str | None = None,
               tag: str | None = None) -> str:
    """Fire `name`; node/service/tag are regex filters applied by receiving agents.
    Returns the event ID."""
    if not name or name.startswith("_"):
        raise ConsulError(f"event name {name!r}: must be non-empty and not start with '_' "
                          f"(reserved by Consul)")
    body = payload.encode() if isinstance(payload, str) else payload
    if len(body) > MAX_PAYLOAD:
        raise ConsulError(f"event {name}: payload of {len(body)} bytes is over {MAX_PAYLOAD}; "
                          f"put data in KV and send its key")
    ev = api.client.event
    answer = api.call(f"fire event {name}",
                      lambda: ev.fire(name, body, node=node, service=service, tag=tag))
    return (answer or {}).get("ID", "")


def list_events(api: ConsulApi, name: str | None = None, index: int = 0,
                wait: str | None = None) -> tuple[int, list[Event]]:
    """Recent events seen by this agent (up to 256); the index only means something against
    the same agent."""
    params: list[tuple[str, str]] = [("name", name)] if name else []
    if index:
        params += [("index", str(index))] + ([("wait", wait)] if wait else [])
    idx, items = api.get_indexed("/v1/event/list", params, what="list events")
    return idx, [_event(i) for i in items or []]


def watch_events(api: ConsulApi, name: str | None = None, **kw) -> Watch[list[Event]]:
    return Watch(lambda index, wait: list_events(api, name, index, wait), **kw)


def fire_drain(api: ConsulApi, node: str) -> str:
    return fire_event(api, DRAIN_EVENT, node)


def _event(item: dict) -> Event:
    raw = item.get("Payload") or ""
    payload = base64.b64decode(raw) if isinstance(raw, str) else bytes(raw)
    return Event(id=item.get("ID", ""), name=item.get("Name", ""), payload=payload,
                 ltime=int(item.get("LTime") or 0))
