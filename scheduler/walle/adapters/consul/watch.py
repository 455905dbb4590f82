"""Blocking-query watches done the way Consul's docs ask:
- pass the last X-Consul-Index back with a bounded `wait`;
- if the index goes backwards (a server restored a snapshot, a stand-in restarted), reset it to 0;
- never send index 0 after the first call (it would not block: a busy loop) - use at least 1;
- a return does not prove a change, so compare the data and yield only real changes;
- rate-limit the loop with a token bucket (no fixed sleep): a bug that makes every call return
  at once costs `rate` calls per second, not a spinning CPU;
- a call that fails (Consul down, a long poll closed under it, a garbled answer) never ends the
  watch: it is retried with the same index after a capped exponential back-off, for as long as
  the watch is not stopped. The adapter's own retry policy gives up on one call after 30 s (and
  at once on a long poll that failed after more than 30 s); the watch outlives that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from walle.adapters.consul.api import go_duration

log = logging.getLogger("walle.consul.watch")

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
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
        name: str = "watch",
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
        self.name = name
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self.failures = 0  # failed calls in a row (0 after any answer)
        self.last_error: str | None = None

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def pause(self, seconds: float) -> bool:
        """Sleep up to `seconds`, cut short by stop(); True when stopped."""
        return self._stop.wait(seconds)

    def poll(self, wait: float | None = None) -> tuple[int, T, bool] | None:
        """One rate-limited blocking call -> (index, data, changed); None if stopped meanwhile
        or if the call failed (after backing off: the next poll asks again)."""
        delay = self._bucket.take()
        if delay and self._stop.wait(delay):
            return None
        if self.stopped:
            return None
        sent = request_index(self.index, first_call=self.calls == 0)
        try:
            raw_index, data = self._fetch(sent, go_duration(min(wait or self.wait, self.wait)))
        except Exception as err:  # any failure: back off and ask again (the caller's stop ends it)
            self._back_off(err, limit=wait)
            return None
        if self.failures:
            log.info("%s answers again after %d failed call(s)", self.name, self.failures)
        self.failures, self.last_error = 0, None
        self.calls += 1
        self.index = advance_index(self.index, int(raw_index))
        changed = not self._has_data or data != self._data
        self._data, self._has_data = data, True
        return self.index, data, changed

    def _back_off(self, err: Exception, limit: float | None = None) -> None:
        """Wait base * 2^(failures-1), capped (and no longer than `limit`, what is left of a
        caller's timeout), or until stop(). Logs the first failure of a run and then every
        tenth, so an outage does not flood the log."""
        self.failures += 1
        self.last_error = f"{type(err).__name__}: {err}"
        delay = min(self.retry_cap, self.retry_base * 2 ** (self.failures - 1))
        if limit is not None:
            delay = min(delay, limit)
        if self.failures == 1 or self.failures % 10 == 0:
            log.warning("%s: call failed %d time(s) in a row, retrying in %.1fs: %s",
                        self.name, self.failures, delay, self.last_error)
        self.pause(delay)

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
