"""Nodes gone from the leader's view: away for a grace period before their instances count
as lost.

Consul says two different things about a node that stops answering:
- **failed**: its `serfHealth` check is critical (Serf's gossip lost it: crash, power,
  partition). The node is `down`. A crashed node runs nothing, but a node cut off by a
  partition still runs its units, and nothing can reach it to stop them. Its own fence
  (roles/node `walle-fence`, docs/architecture.md "Fencing") stops every Walle unit on it once
  it has been cut off from Consul for `fence` seconds. So a failed node is **away** for the
  down grace (at least the fence time plus a margin), counted from when this leader first saw
  it failed: its instances are neither moved nor stopped, and only then are they lost and
  move elsewhere. By then the cut-off copy has stopped: never two running instances of one
  slot, at the price of a failover that takes the down grace longer.
- **left**: it is gone from the catalog with its services and checks. That is a graceful Serf
  leave, which is what `systemctl restart walle-serf` (an agent restart, an upgrade) does;
  the units on the node keep running and the agent is usually back within seconds. Moving
  them would start a second instance of each slot while the first still runs, so a node that
  drops out of the catalog is away for the leave grace (its fence fires too if it stays out
  longer than the fence time, so the leave grace must not be shorter either).

While a node is away nothing is placed on it (it is missing or down) and its instances are
neither moved nor stopped. If it comes back in time, its instances are still there (or, if its
fence fired, the leader starts them again where they are: Scheduler._restart_fenced).

"Missing" needs a memory: the nodes this leader saw in the catalog, plus the nodes the slot
records name (a new leader that never saw a node learns of it from the records; its grace
starts when first noticed). A failed node that then leaves the catalog (Consul reaps failed
nodes) keeps the grace that started when it failed: it does not start again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from walle.service.cluster import Snapshot, node_state, records_by_node

DEFAULT_FENCE_AFTER = 10.0  # seconds cut off from Consul before a node stops its units
# The least margin between a node's fence and the leader's grace: the fence checks every
# second with a 2 s timeout, so it fires at most ~3 s late, and its stops need a moment.
MIN_FENCE_MARGIN = 4.0
DEFAULT_DOWN_GRACE = DEFAULT_FENCE_AFTER + 5.0  # a failed node's work moves after this
DEFAULT_LEAVE_GRACE = 15.0  # seconds; an agent restart takes 1-3 s


def check_graces(fence_after: float, down_grace: float, leave_grace: float) -> None:
    """A grace shorter than the nodes' fence (plus MIN_FENCE_MARGIN) would start a second
    copy of a slot while a cut-off node may still run the first: refuse it."""
    if not fence_after >= 0:
        raise ValueError(f"node fence time {fence_after!r}: must be 0 or more seconds")
    if fence_after == 0:  # the nodes run no fence (walle_fence_after: 0): nothing to wait for
        return
    least = fence_after + MIN_FENCE_MARGIN
    for flag, grace in (("--node-down-grace", down_grace), ("--node-leave-grace", leave_grace)):
        if not grace >= least:
            raise ValueError(
                f"{flag} {grace:g}s is shorter than the nodes' fence ({fence_after:g}s, "
                f"--node-fence-after, the node role's walle_fence_after) plus "
                f"{MIN_FENCE_MARGIN:g}s: a cut-off node could still run an instance when it "
                f"is placed again elsewhere; raise it to {least:g}s or more")


class NodePresence:
    """The leader's memory of which nodes it has seen, and since when the missing or failed
    ones are gone. One per leadership term (a new leader starts with no memory)."""

    def __init__(self, grace: float = DEFAULT_LEAVE_GRACE, down_grace: float = 0.0):
        for what, value in (("leave", grace), ("down", down_grace)):
            if not value >= 0:
                raise ValueError(f"node {what} grace {value!r}: must be 0 or more seconds")
        self.grace = grace
        self.down_grace = down_grace
        self._up: dict[str, bool] = {}  # node -> not down when last seen in the catalog
        self._missing_since: dict[str, float] = {}
        self._down_since: dict[str, float] = {}  # failed nodes: first seen failed

    def observe(self, snap: Snapshot, now: float) -> Snapshot:
        """`snap` with `away` set: the nodes missing from the catalog or failed, within their
        grace."""
        away = self.update({n.name: node_state(n, False) != "down" for n in snap.health.nodes},
                           records_by_node(snap.records), now)
        return replace(snap, away=away)

    def update(self, present: dict[str, bool], named: Iterable[str],
               now: float) -> frozenset[str]:
        """`present`: node -> up, for every node in the catalog now; `named`: nodes the slot
        records name. Returns the nodes away (missing or failed, within their grace)."""
        named = set(named)
        for node, up in present.items():
            self._up[node] = up
            self._missing_since.pop(node, None)
            if up:
                self._down_since.pop(node, None)
            else:
                self._down_since.setdefault(node, now)
        for node in (set(self._up) | named) - set(present):
            if node not in self._missing_since and node not in self._down_since:
                self._missing_since[node] = now  # first noticed missing now
        for node in set(self._missing_since) | set(self._down_since):
            if node not in named and node not in present and not self._away(node, now):
                self._missing_since.pop(node, None)  # lost, of no more interest
                self._down_since.pop(node, None)
                self._up.pop(node, None)
        return frozenset(node for node in set(self._missing_since) | set(self._down_since)
                         if self._away(node, now))

    def memory(self) -> dict[str, dict[str, float]]:
        """Since when each node is seen failed or missing: what `walle plan` needs to count
        the graces as the leader does (the leader publishes it, walle/config/presence)."""
        return {"down_since": dict(sorted(self._down_since.items())),
                "missing_since": dict(sorted(self._missing_since.items()))}

    def remember(self, memory: Mapping[str, Any]) -> None:
        """Start from a leader's published memory (values that are not times are skipped)."""
        for field, into in (("down_since", self._down_since),
                            ("missing_since", self._missing_since)):
            for node, since in dict(memory.get(field) or {}).items():
                if isinstance(since, int | float) and not isinstance(since, bool):
                    into[str(node)] = float(since)

    def next_deadline(self, now: float) -> float | None:
        """When the earliest grace still running ends (the loop wakes then)."""
        ends = [end for end in self._ends() if end > now]
        return min(ends) + 0.1 if ends else None

    def _ends(self) -> list[float]:
        return ([since + self.down_grace for since in self._down_since.values()]
                + [since + self.grace for node, since in self._missing_since.items()
                   if node not in self._down_since])

    def _away(self, node: str, now: float) -> bool:
        if node in self._down_since:  # failed (and maybe reaped since): the down grace
            return now - self._down_since[node] < self.down_grace
        return node in self._missing_since and now - self._missing_since[node] < self.grace
