"""User events (api-docs/event.mdx). Kept like one agent's ring of the last 256; an agent only
lists the events whose node/service/tag filters it matches (agent/user_event.go)."""

from __future__ import annotations

import base64
import re
import uuid

from .errors import bad_request, rpc_error

MAX_EVENTS = 256


def uuid_to_index(event_id: str) -> int:
    """Consul's event-list index: XOR of the two halves of the newest event's UUID."""
    hexid = event_id.replace("-", "")
    return int(hexid[:16], 16) ^ int(hexid[16:], 16)


class EventMixin:
    events: list[dict]
    ltime: int

    def event_fire(self, name: str, payload: bytes, node: str, service: str, tag: str) -> dict:
        if not name:
            raise bad_request("Missing name")
        # agent/user_event.go validateUserEventParams; event_endpoint.go answers its errors 500
        if tag and not service:
            raise rpc_error("Cannot provide tag filter without service filter")
        for field, pattern in (("node", node), ("service", service), ("tag", tag)):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise rpc_error(f"Invalid {field} filter: {exc}") from exc
        with self.write():
            self.ltime += 1
            event = {"ID": str(uuid.uuid4()), "Name": name,
                     "Payload": base64.b64encode(payload).decode() if payload else None,
                     "NodeFilter": node, "ServiceFilter": service, "TagFilter": tag,
                     "Version": 1, "LTime": self.ltime}
            self.events = [*self.events, event][-MAX_EVENTS:]
            self.touch("events")
        # event.mdx: the fire answer has LTime 0; the Lamport time is set when the event is
        # gossiped, and the list shows it
        return {**event, "LTime": 0}

    def event_view(self, agent_node: str, name: str):
        # event_endpoint.go: the ?name= filter first, then the index of the newest left (1 if
        # none, so a watch never spins on index 0)
        seen = [e for e in self.events if self._delivered_to(e, agent_node)
                and (not name or e["Name"] == name)]
        return (uuid_to_index(seen[-1]["ID"]) if seen else 1), seen

    def _delivered_to(self, event: dict, node: str) -> bool:
        if event["NodeFilter"] and not re.search(event["NodeFilter"], node):
            return False
        if event["ServiceFilter"]:
            services = [s for (n, _), s in self.services.items() if n == node
                        and re.search(event["ServiceFilter"], s["Service"])]
            if event["TagFilter"]:
                services = [s for s in services
                            if any(re.search(event["TagFilter"], t) for t in s["Tags"])]
            return bool(services)
        return True
