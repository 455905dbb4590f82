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
