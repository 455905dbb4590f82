import pytest

from walle.adapters.consul import TokenBucket, Watch
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
