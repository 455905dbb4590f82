"""Blocking-query watches done the way Consul's docs ask:
- pass the last X-Consul-Index back with a bounded `wait`;
- if the index goes backwards (a server restored a snapshot, a stand-in restarted), reset it to 0;
- never send index 0 after the first call (it would not block: a busy loop) - use at least 1;
- a return does not prove a change, so compare the data and yield only real changes;
- rate-limit the loop with a token bucket (no fixed sleep): a bug that makes every call return
  at once costs `rate` calls per second, not a spinning CPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from walle.adapters.consul.api import go_duration

T = TypeVar("T")

# fetch(index, wait) -> (X-Consul-Index, data). index 0 means "do not block".
Fetch = Callable[[int, str], tuple[int | str, T]]

MAX_WAIT = 600.0  # Consul caps ?wait at 10 minutes


def advance_index(previous: int, returned: int) -> int:
    """The index to remember after a call answered `returned`: reset to 0 when it went back."""
    return 0 if returned < previous else returned


def request_index(tracked: int, first_call: bool) -> int:
    """The index to send: 0 only on the very first call (a plain read), else at least 1."""
    return 0 if first_call else max(1, tracked)


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. take() -> seconds to wait first."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError(f"TokenBucket needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Watch(Generic[T]):
    """Iterate over (index, data) each time `fetch`'s data changes; stop() ends the iteration
    (at the latest after the current blocking call returns, i.e. within `wait` seconds)."""

    def __init__(
        self,
        fetch: Fetch[T],
        *,
        wait: float = 60.0,
        rate: float = 2.0,
        burst: int = 4,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 0 < wait <= MAX_WAIT:
            raise ValueError(f"Watch wait must be in (0, {MAX_WAIT:.0f}] seconds, got {wait}")
        self._fetch = fetch
        self.wait = wait
        self._bucket = TokenBucket(rate, burst, clock)
        self._stop = stop or threading.Event()
        self._clock = clock
        self.index = 0
        self.calls = 0
        self._data: T | None = None
        self._has_data = False

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def poll(self, wait: float | None = None) -> tuple[int, T, bool] | None:
        """One rate-limited blocking call -> (index, data, changed); None if stopped meanwhile."""
        delay = self._bucket.take()
        if delay and self._stop.wait(delay):
            return None
        if self.stopped:
            return None
        sent = request_index(self.index, first_call=self.calls == 0)
        raw_index, data = self._fetch(sent, go_duration(min(wait or self.wait, self.wait)))
        self.calls += 1
        self.index = advance_index(self.index, int(raw_index))
        changed = not self._has_data or data != self._data
        self._data, self._has_data = data, True
        return self.index, data, changed

    def next_change(self, timeout: float | None = None) -> tuple[int, T] | None:
        """Block until the data changes (first call: the current data), the timeout passes
        (-> None) or stop() is called (-> None)."""
        deadline = None if timeout is None else self._clock() + timeout
        while not self.stopped:
            remaining = None if deadline is None else deadline - self._clock()
            if remaining is not None and remaining <= 0:
                return None
            result = self.poll(wait=None if remaining is None else max(remaining, 0.001))
            if result is not None and result[2]:
                return result[0], result[1]
        return None

    def __iter__(self) -> Iterator[tuple[int, T]]:
        while not self.stopped:
            change = self.next_change()
            if change is not None:
                yield change
