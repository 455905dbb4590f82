"""The leader's usage-driven grants (docs/architecture.md, "Usage-driven grants").

Every `usage_interval` seconds (a `walle scheduler run` flag, 15 s by default) the leader reads
what the instances of its nodes really use (adapters/usage.py: each node's walle-exporter,
in parallel, each request bounded by a timeout) in a background thread, so a slow node never
holds a step. Each reading that arrives is one sample for core/grants.py usage_grants, per
node; the changed grants are applied live by the step (grants.yml: walle_slice, `systemctl
set-property --runtime`, no restart), kept in the slot records (a new leader keeps them) and
written as `regranted` events with the measured value.

The streaks (consecutive pressing or idle samples) live in this leader's memory only: a new
leader starts counting again from the grants in the records, which only delays a change.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace

from walle.adapters.consul import ConsulError
from walle.adapters.usage import Usage, cpu_throttled_share, measure
from walle.core.grants import Change, ElasticInstance, ElasticPolicy, Measured, Streak, usage_grants
from walle.core.model import Allocation, Node
from walle.naming import instance_id

log = logging.getLogger("walle.scheduler")

USAGE_INTERVAL = 15.0


@dataclass(frozen=True)
class Reading:
    started: float  # the leader's clock when the read began
    usage: Usage


class UsagePoller:
    """The leader's one reading of usage per interval: read in the background, at most once
    every `every` seconds and one read at a time; `on_read` is called when a reading is ready
    (the leader wakes up to use it). Two consumers share each reading: the usage-driven grants
    take it once as a sample (`take`), the autoscaler measures on the latest one (`latest`)."""

    def __init__(self, read: Callable[[Collection[str]], Usage], every: float,
                 clock: Callable[[], float], on_read: Callable[[], None] = lambda: None):
        self.read, self.every, self.clock, self.on_read = read, every, clock, on_read
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready: Reading | None = None
        self._latest: Reading | None = None
        self._last_start = float("-inf")

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def poll(self, nodes: Collection[str]) -> None:
        """Start a read of `nodes` if one is due and none is under way."""
        now = self.clock()
        if not self.enabled or not nodes or now < self._last_start + self.every:
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._last_start = now
            self._thread = threading.Thread(target=self._read, args=(frozenset(nodes), now),
                                            name="walle-usage", daemon=True)
            self._thread.start()

    def take(self) -> Reading | None:
        """The reading that arrived since the last take, once."""
        with self._lock:
            ready, self._ready = self._ready, None
            return ready

    @property
    def latest(self) -> Reading | None:
        """The last reading that arrived (kept: `take` does not consume it)."""
        with self._lock:
            return self._latest

    def next_due(self) -> float | None:
        return self._last_start + self.every if self.enabled else None

    def join(self, timeout: float) -> None:
        """Wait for the read under way (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _read(self, nodes: frozenset[str], started: float) -> None:
        try:
            usage = self.read(nodes)
        except ConsulError as err:
            log.warning("usage not read (grants stay as they are): %s", err)
            return
        except Exception:  # noqa: BLE001 - a reader bug must not kill the thread silently
            log.exception("usage not read (grants stay as they are)")
            return
        with self._lock:
            self._ready = self._latest = Reading(started, usage)
        self.on_read()


@dataclass(frozen=True)
class Regranted:
    alloc: Allocation  # with its new grant
    change: Change

    @property
    def message(self) -> str:
        return describe(self.change)


class ElasticGrants:
    """One leader's decisions from readings: streaks per instance, and when each grant last
    changed (a reading started before that measured the old grant: it is not a sample)."""

    def __init__(self, policy: ElasticPolicy | None = None):
        self.policy = policy or ElasticPolicy()
        self.streaks: dict[str, Streak] = {}
        self.changed_at: dict[str, float] = {}

    def decide(self, nodes: Mapping[str, Node], allocations: Collection[Allocation],
               reading: Reading) -> list[Regranted]:
        by_node: dict[str, list[Allocation]] = defaultdict(list)
        for a in allocations:
            if a.state == "running" and a.grant is not None:
                by_node[a.node].append(a)
        out: list[Regranted] = []
        streaks: dict[str, Streak] = {}
        for name in sorted(by_node):
            node = nodes.get(name)
            if node is None or node.state != "ready" or any(
                    None in (a.grant.cpu_quota_percent, a.grant.memory_high)
                    for a in by_node[name] if a.grant is not None):
                continue  # not ours to move, or a grant without the limits we move
            allocs = {a.key: a for a in by_node[name]}
            instances = [self._instance(a, reading) for a in allocs.values()]
            changes, node_streaks = usage_grants(node.capacity.cpu, node.capacity.memory,
                                                 instances, self.policy)
            streaks.update(node_streaks)
            out += [Regranted(replace(allocs[c.key], grant=c.new), c) for c in changes]
        self.streaks = streaks  # instances gone or not running forget theirs
        return out

    def applied(self, keys: Collection[str], at: float) -> None:
        """These grants changed at `at` (by this policy or by the plan)."""
        for key in keys:
            self.changed_at[key] = at
            self.streaks.pop(key, None)

    def _instance(self, a: Allocation, reading: Reading) -> ElasticInstance:
        measured = Measured()
        if reading.started >= self.changed_at.get(a.key, float("-inf")):
            used = reading.usage.get((a.node, instance_id(a.job, a.slot)), {})
            cpu_percent = measure(used, "cpu_percent")
            measured = Measured(None if cpu_percent is None else cpu_percent / 100,
                                _int_or_none(measure(used, "memory_bytes")),
                                cpu_throttled_share(used))
        assert a.grant is not None
        return ElasticInstance(a.key, a.reserved.cpu, a.ceiling.cpu, a.reserved.memory,
                               a.ceiling.memory, a.grant, measured,
                               self.streaks.get(a.key, Streak()))


def describe(change: Change) -> str:
    """The event text: what moved, from what to what, and the usage that moved it."""
    old, new, m = change.old, change.new, change.measured
    parts = []
    if new.cpu_quota_percent != old.cpu_quota_percent:
        seen = [] if m.cpu_cores is None else [f"using {m.cpu_cores * 100:.0f}%"]
        if m.cpu_throttled is not None and m.cpu_throttled > 0:
            seen.append(f"throttled in {m.cpu_throttled * 100:.0f}% of periods")
        used = f" ({', '.join(seen)})" if seen else ""
        parts.append(f"CPUQuota {old.cpu_quota_percent}% -> {new.cpu_quota_percent}%{used}")
    if new.memory_high != old.memory_high:
        used = "" if m.memory_bytes is None else \
            f" (using {_mib(m.memory_bytes)})"
        parts.append(f"MemoryHigh {_mib(old.memory_high)} -> {_mib(new.memory_high)}{used}")
    return "usage: " + "; ".join(parts)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f}MiB"


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)
