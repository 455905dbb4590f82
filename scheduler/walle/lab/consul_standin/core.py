"""The state core: one lock, a Raft-like global index, per-table indexes and blocking reads.

Every write runs inside `write()`; the first `touch()` in it takes the next global index (so a
transaction's changes share one index, as one Raft entry would) and stamps the tables it names.
Blocking reads wait on the same condition, re-evaluate their view after every write and return
when the view's index passes the client's, or at the deadline.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0
JITTER_FRACTION = 16


# The stand-in's own generator: server threads never touch the global `random` state that
# the process they run in (tests, property-based ones included) may rely on.
RNG = random.Random()


def query_timeout(wait_s: float | None, rng: random.Random | None = None) -> float:
    """Consul: wait defaults to 5m, is capped at 10m, and gets up to wait/16 of jitter."""
    wait = DEFAULT_WAIT_S if not wait_s or wait_s <= 0 else min(wait_s, MAX_WAIT_S)
    return wait + (rng or RNG).uniform(0, wait / JITTER_FRACTION)


class StoreCore:
    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.cond = threading.Condition(threading.RLock())
        self.index = 1
        self.tables: dict[str, int] = defaultdict(int)
        self._depth = 0
        self._write_index: int | None = None
        self._touched: set[str] = set()
        self.listeners: list[Callable[[], None]] = []
        # moves when a snapshot restore replaces the state: blocking queries return at once,
        # as Consul abandons its old state store (their index may then go backwards)
        self.generation = 0

    @contextmanager
    def write(self) -> Iterator[None]:
        with self.cond:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    try:
                        self.commit()
                    finally:
                        self._end_write()

    def _end_write(self) -> None:
        if self._write_index is not None:
            self._write_index = None
            self.cond.notify_all()
            for listener in self.listeners:
                listener()

    def commit(self) -> None:
        """End of the outermost write, still under the lock: the persistence hook."""

    def touch(self, *tables: str) -> int:
        """The index of the current write, stamped on the named tables."""
        assert self._depth > 0, "touch() outside write()"
        if self._write_index is None:
            self.index += 1
            self._write_index = self.index
        for table in tables:
            self.tables[table] = self._write_index
        self._touched.update(tables)
        return self._write_index

    def table_index(self, *tables: str) -> int:
        return max([1, *(self.tables[t] for t in tables)])

    def block(self, view: Callable[[], tuple[int, Any]], min_index: int, timeout_s: float,
              changed: Callable[[int, int], bool] = lambda idx, seen: idx > seen,
              index_of: Callable[[], int] | None = None) -> tuple[int, Any]:
        """Evaluate `view` until its index changes against min_index or the timeout passes.
        `index_of` (the view's index alone, cheap) is what a waiting query checks after each
        write, as Consul wakes a query only when what it watches changed: the view itself
        (the answer) is then built once, not after every write of the cluster."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            generation = self.generation
            while True:
                left = deadline - time.monotonic()
                if index_of is not None and min_index > 0 and left > 0 \
                        and generation == self.generation \
                        and not changed(max(index_of(), 1), min_index):
                    self.cond.wait(left)
                    continue
                idx, data = view()
                idx = max(idx, 1)
                if min_index <= 0 or changed(idx, min_index) or left <= 0 \
                        or generation != self.generation:
                    return idx, data
                self.cond.wait(left)
