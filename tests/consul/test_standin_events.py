"""User events and status, from https://developer.hashicorp.com/consul/api-docs/event and
https://developer.hashicorp.com/consul/api-docs/status."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.consul


def test_fire_returns_the_event_and_list_filters_by_name(consul_client, unique):
    name = unique("drain")
    fired = consul_client.event.fire(name, "node1")
    assert fired["Name"] == name and fired["ID"]
    _, events = consul_client.event.list(name=name)
    assert [(e["ID"], e["Payload"]) for e in events] == [(fired["ID"], b"node1")]
    _, other = consul_client.event.list(name=unique("never-fired"))
    assert other == []


def test_event_list_blocks_until_a_new_event(consul_client, unique):
    name = unique("evt")
    consul_client.event.fire(name, "first")
    index, _ = consul_client.event.list(name=name)
    timer = threading.Timer(0.3, consul_client.event.fire, args=(name, "second"))
    timer.start()
    started = time.monotonic()
    try:
        new_index, events = consul_client.event.list(name=name, index=index, wait="10s")
    finally:
        timer.join()
    assert time.monotonic() - started < 5
    # event.mdx: the index is not monotonic, only different when a new event arrives.
    assert new_index != index and events[-1]["Payload"] == b"second"


def test_status_leader_and_peers(consul_client):
    leader = consul_client.status.leader()
    assert leader and leader in consul_client.status.peers()
