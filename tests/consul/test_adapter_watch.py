"""Watches over real blocking queries (https://developer.hashicorp.com/consul/api-docs/features/blocking)."""

from __future__ import annotations

import threading
import time

import pytest

from walle.adapters.consul import ConsulApi, ConsulConfig, Watch, nodes, watch_nodes

pytestmark = pytest.mark.consul


@pytest.fixture
def api(consul_addr):
    return ConsulApi(ConsulConfig.from_env(consul_addr, env={}))


def prefix_fetch(api, prefix):
    kv = api.client.kv

    def fetch(index, wait):
        idx, entries = kv.get(prefix, recurse=True, index=index or None, wait=wait)
        return idx, {e["Key"]: e["Value"] for e in entries or []}

    return fetch


def test_watch_returns_on_change_and_not_on_unrelated_writes(api, consul_client, unique):
    prefix = unique("walle-test/watch") + "/"
    consul_client.kv.put(prefix + "a", "1")
    watch = Watch(prefix_fetch(api, prefix), wait=5, rate=20, burst=5)
    try:
        index, data = watch.next_change(timeout=5)
        assert data == {prefix + "a": b"1"} and index >= 1
        timer = threading.Timer(0.5, lambda: consul_client.kv.put(prefix + "b", "2"))
        timer.start()
        started = time.monotonic()
        change = watch.next_change(timeout=10)
        timer.join()
        assert change is not None and change[1][prefix + "b"] == b"2"
        assert change[0] > index  # the prefix index is the largest ModifyIndex under it
        assert time.monotonic() - started < 5  # woke on the write, not on the wait
        consul_client.kv.put(unique("walle-test/elsewhere"), "x")
        assert watch.next_change(timeout=1.5) is None  # nothing under the prefix changed
        assert watch.calls <= 2 + 1.5 * 20 + 5  # rate limit bounds the calls
    finally:
        watch.stop()
        consul_client.kv.delete(prefix, recurse=True)


def test_stop_ends_iteration(api, unique):
    watch = Watch(prefix_fetch(api, unique("walle-test/stop") + "/"), wait=1, rate=20)
    seen = []
    for change in watch:
        seen.append(change)
        watch.stop()
    assert len(seen) == 1 and watch.stopped


def test_nodes_include_the_agent_with_passing_serf_health(api, consul_client):
    me = consul_client.agent.self()["Config"]["NodeName"]
    found = {n.name: n for n in nodes(api)}
    assert me in found and found[me].health == "passing"
    watch = watch_nodes(api, wait=1)
    index, listed = watch.next_change(timeout=5)
    assert index >= 1 and me in [n.name for n in listed]
