"""Nodes that left the catalog: away for a grace period before their instances count as lost.

Consul says two different things about a node that stops answering:
- **failed**: its `serfHealth` check is critical (Serf's gossip lost it: crash, power,
  partition). The node is `down`; its instances are lost and move at once.
- **left**: it is gone from the catalog with its services and checks. That is a graceful Serf
  leave, which is what `systemctl restart walle-serf` (an agent restart, an upgrade) does;
  the units on the node keep running and the agent is usually back within seconds.

Moving the instances of a node that left would start a second instance of each slot while the
first still runs and serves (never two running instances of one slot). So a node that drops
out of the catalog is **away** for `grace` seconds, counted from when this leader first saw it
missing: nothing is placed on it (it is not in the snapshot's nodes) and its instances are
neither moved nor stopped. If it comes back in time, its instances are simply still there.
After the grace they are lost and move as from a failed node.

"Missing" needs a memory: the nodes this leader saw in the catalog, plus the nodes the slot
records name (a new leader that never saw a node learns of it from the records; its grace
starts when first noticed). A node last seen failed gets no grace when it later leaves the
catalog (Consul reaps failed nodes): its instances were already lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from walle.service.cluster import Snapshot, node_state, records_by_node

DEFAULT_LEAVE_GRACE = 15.0  # seconds; an agent restart takes 1-3 s


class NodePresence:
    """The leader's memory of which nodes it has seen, and since when the missing ones are
    missing. One per leadership term (a new leader starts with no memory)."""

    def __init__(self, grace: float = DEFAULT_LEAVE_GRACE):
        if grace < 0:
            raise ValueError(f"node leave grace {grace!r}: must be 0 or more seconds")
        self.grace = grace
        self._up: dict[str, bool] = {}  # node -> not down when last seen in the catalog
        self._missing_since: dict[str, float] = {}

    def observe(self, snap: Snapshot, now: float) -> Snapshot:
        """`snap` with `away` set: the nodes missing from the catalog within their grace."""
        away = self.update({n.name: node_state(n, False) != "down" for n in snap.health.nodes},
                           records_by_node(snap.records), now)
        return replace(snap, away=away)

    def update(self, present: dict[str, bool], named: Iterable[str],
               now: float) -> frozenset[str]:
        """`present`: node -> up, for every node in the catalog now; `named`: nodes the slot
        records name. Returns the nodes away (missing, within their grace)."""
        named = set(named)
        for node, up in present.items():
            self._up[node] = up
            self._missing_since.pop(node, None)
        for node in (set(self._up) | named) - set(present):
            if node not in self._missing_since:  # first noticed missing now
                left = self._up.get(node, True)  # never seen: the records say it runs work
                self._missing_since[node] = now if left else float("-inf")
        for node, since in list(self._missing_since.items()):
            if node not in named and not self._within(since, now):  # of no more interest
                del self._missing_since[node]
                self._up.pop(node, None)
        return frozenset(node for node, since in self._missing_since.items()
                         if self._within(since, now))

    def next_deadline(self, now: float) -> float | None:
        """When the earliest grace still running ends (the loop wakes then)."""
        ends = [since + self.grace for since in self._missing_since.values()
                if self._within(since, now)]
        return min(ends) + 0.1 if ends else None

    def _within(self, since: float, now: float) -> bool:
        return now - since < self.grace
