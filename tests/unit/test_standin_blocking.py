"""Blocking-query timing, from https://developer.hashicorp.com/consul/api-docs/features/blocking:
`wait` defaults to 5 minutes, is limited to 10 minutes, and gets up to wait/16 of random
extra time; an index of 0 does not block; X-Consul-Index is always greater than zero."""

import random

import pytest

from walle.lab.consul_standin.core import StoreCore, query_timeout


class Edge(random.Random):
    """A generator at one end of its range, to see the jitter's bounds."""

    def __init__(self, top: bool):
        super().__init__()
        self.top = top

    def uniform(self, a, b):
        return b if self.top else a


@pytest.mark.parametrize(("wait_s", "base"), [(None, 300.0), (0, 300.0), (10.0, 10.0),
                                              (600.0, 600.0), (3600.0, 600.0)])
def test_wait_default_cap_and_jitter(wait_s, base):
    assert query_timeout(wait_s, Edge(top=False)) == base
    assert query_timeout(wait_s, Edge(top=True)) == base + base / 16


def test_index_zero_answers_at_once_and_the_index_is_never_zero():
    core = StoreCore()
    idx, data = core.block(lambda: (0, "x"), min_index=0, timeout_s=60)
    assert (idx, data) == (1, "x")


def test_an_unchanged_view_answers_at_the_deadline_with_the_same_index():
    core = StoreCore()
    idx, _ = core.block(lambda: (7, None), min_index=7, timeout_s=0.05)
    assert idx == 7


def test_a_waiting_query_builds_its_answer_only_once_its_index_moves():
    """Consul wakes a blocking query when what it watches changes; other writes cost it
    nothing (the stand-in checks `index_of`, not the whole view, after each write)."""
    import threading
    import time

    core = StoreCore()
    watched = {"index": 5}
    built = []

    def view():
        built.append(watched["index"])
        return watched["index"], "answer"

    result = {}
    waiter = threading.Thread(target=lambda: result.update(answer=core.block(
        view, min_index=5, timeout_s=30, index_of=lambda: watched["index"])))
    waiter.start()
    for _ in range(50):  # writes to something else
        with core.write():
            core.touch("other")
    time.sleep(0.1)
    assert built == [] and waiter.is_alive()
    with core.write():
        watched["index"] = core.touch("watched")
    waiter.join(timeout=10)
    assert result["answer"] == (watched["index"], "answer")
    assert built == [watched["index"]]
