import threading
import time

import pytest
import requests

from walle.adapters.consul import (
    ConsulError,
    ConsulUnreachable,
    RetryPolicy,
    TokenBucket,
    Watch,
    call_with_retry,
)
from walle.adapters.consul.watch import advance_index, request_index


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def scripted(answers):
    """A fetch that replays (index, data) answers and records the index it was sent."""
    sent = []

    def fetch(index, wait):
        sent.append((index, wait))
        return answers[len(sent) - 1]

    return fetch, sent


def test_index_rules():
    assert advance_index(10, 12) == 12
    assert advance_index(10, 10) == 10
    assert advance_index(10, 3) == 0  # went backwards: reset
    assert request_index(0, first_call=True) == 0
    assert request_index(0, first_call=False) == 1  # never block with 0
    assert request_index(42, first_call=False) == 42


def test_yields_first_data_then_only_changes():
    fetch, sent = scripted([(5, "a"), (6, "a"), (7, "b"), (7, "b"), (9, "c")])
    w = Watch(fetch, wait=30, rate=1000, burst=10)
    assert w.next_change() == (5, "a")
    assert w.next_change() == (7, "b")  # index 6 returned the same data: not a change
    assert w.next_change() == (9, "c")
    assert [i for i, _ in sent] == [0, 5, 6, 7, 7]
    assert all(wait == "30s" for _, wait in sent)


def test_index_going_backwards_resets_and_next_call_uses_1():
    fetch, sent = scripted([(50, "a"), (3, "a"), (4, "b")])
    w = Watch(fetch, wait=10, rate=1000, burst=10)
    w.next_change()
    assert w.next_change() == (4, "b")
    assert [i for i, _ in sent] == [0, 50, 1]


def test_zero_index_from_server_never_goes_back_out_as_zero():
    fetch, sent = scripted([(0, "a"), (0, "a"), (0, "b")])
    w = Watch(fetch, wait=10, rate=1000, burst=10)
    w.next_change()
    w.next_change()
    assert [i for i, _ in sent] == [0, 1, 1]


def test_rate_limit_waits_instead_of_spinning():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=2, clock=clock)
    assert bucket.take() == 0 and bucket.take() == 0
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 10
    assert bucket.take() == 0


def test_next_change_times_out_and_stop_ends_iteration():
    clock = Clock()

    def fetch(index, wait):
        clock.now += 1.0  # each blocking call "takes" a second and changes nothing
        return 7, "same"

    w = Watch(fetch, wait=5, rate=1000, burst=1000, clock=clock)
    assert w.next_change() == (7, "same")
    assert w.next_change(timeout=3) is None
    assert w.calls <= 5
    w.stop()
    assert list(w) == []


def test_wait_is_bounded():
    with pytest.raises(ValueError, match="wait"):
        Watch(lambda i, w: (1, None), wait=601)


# ----- a failing call never ends the watch (issue 9, item 11) -------------------------------
def flaky(answers):
    """A fetch that replays answers; an exception in the list is raised instead of answered."""
    sent = []

    def fetch(index, wait):
        sent.append(index)
        answer = answers[len(sent) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return fetch, sent


def test_a_failing_call_is_retried_and_the_watch_keeps_firing():
    fetch, sent = flaky([(5, "a"), ConsulError("stand-in closed the long poll"),
                         ConsulUnreachable("127.0.0.1:1", "read jobs", 6, 3.0, "refused"),
                         RuntimeError("garbled answer"), (6, "b"), (7, "c")])
    w = Watch(fetch, wait=10, rate=1000, burst=10, retry_base=0.001, retry_cap=0.01)
    assert w.next_change() == (5, "a")
    assert w.next_change() == (6, "b")  # three failures in a row, then the change
    assert w.next_change() == (7, "c")
    assert sent == [0, 5, 5, 5, 5, 6]  # retried with the index it had: nothing missed
    assert w.failures == 0 and w.last_error is None  # a good answer resets the back-off


def test_retry_waits_grow_to_the_cap_and_stop_ends_the_wait():
    waits = []

    class Stop(threading.Event):
        def wait(self, timeout=None):
            waits.append(timeout)
            if len(waits) == 8:
                self.set()
            return self.is_set()

    def fetch(index, wait):
        raise ConsulError("down")

    w = Watch(fetch, wait=10, rate=1000, burst=100, retry_base=0.5, retry_cap=4.0, stop=Stop())
    assert w.next_change() is None  # stopped while backing off: no exception, no spin
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert w.failures == 8 and "down" in w.last_error


def test_a_blocking_call_failing_after_a_long_wait_is_retried():
    """call_with_retry gives up at once on a call that failed after more than its 30 s total
    (a long poll): the watch must still go on."""
    clock = Clock()
    answers = iter(["long-poll-dies", (8, "x"), (9, "y")])

    def once():
        answer = next(answers)
        if answer == "long-poll-dies":
            clock.now += 45.0  # the blocking query hung for 45 s, then the connection dropped
            raise requests.ConnectionError("connection closed by peer")
        return answer

    def fetch(index, wait):
        return call_with_retry(once, what="read jobs", address="127.0.0.1:8500",
                               policy=RetryPolicy(), sleep=lambda s: None, clock=clock)

    w = Watch(fetch, wait=60, rate=1000, burst=10, retry_base=0.001, retry_cap=0.01)
    assert w.next_change() == (8, "x")
    assert w.failures == 0
    assert w.next_change() == (9, "y")


def test_a_timeout_bounds_the_back_off():
    def fetch(index, wait):
        raise ConsulError("down")

    w = Watch(fetch, wait=10, rate=1000, burst=100, retry_base=0.1, retry_cap=30.0)
    started = time.monotonic()
    assert w.next_change(timeout=0.5) is None
    assert time.monotonic() - started < 3  # not the 30 s cap: the caller's timeout wins
    assert w.failures >= 2
