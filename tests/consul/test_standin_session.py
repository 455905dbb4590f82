"""Sessions and locks, from https://developer.hashicorp.com/consul/api-docs/session and
https://developer.hashicorp.com/consul/docs/dynamic-app-config/sessions."""

from __future__ import annotations

import time

import pytest
import requests

import consul

pytestmark = pytest.mark.consul


def test_create_uses_documented_defaults(consul_client, unique):
    session = consul_client.session.create(name=unique("defaults"))
    try:
        _, info = consul_client.session.info(session)
        me = consul_client.agent.self()["Config"]["NodeName"]
        # session.mdx: LockDelay 15s, Node the agent's node, NodeChecks [serfHealth],
        # Behavior release.
        assert info["LockDelay"] == 15 * 10**9
        assert info["Node"] == me
        assert "serfHealth" in (info.get("NodeChecks") or info.get("Checks"))
        assert info["Behavior"] == "release"
    finally:
        consul_client.session.destroy(session)


def test_renew_unknown_session_is_not_found(consul_client):
    with pytest.raises(consul.NotFound):
        consul_client.session.renew("c5b8ba6f-5b9c-4f5a-8a54-8f1e6a5d0d8b")


def test_info_of_unknown_session_is_empty(consul_client):
    assert consul_client.session.info("c5b8ba6f-5b9c-4f5a-8a54-8f1e6a5d0d8b")[1] is None


@pytest.mark.parametrize("ttl", ["5s", "86401s"])
def test_ttl_must_be_between_10s_and_24h(consul_addr, ttl):
    # session.mdx "TTL": must be between 10s and 86400s (py-consul asserts this client-side,
    # so the request is sent raw to check the server).
    resp = requests.put(f"http://{consul_addr}/v1/session/create", json={"TTL": ttl}, timeout=5)
    assert resp.status_code >= 400 and "TTL" in resp.text


def test_destroy_releases_lock_and_lock_delay_blocks_acquire(consul_client, unique):
    key = unique("lock")
    holder = consul_client.session.create(name=unique("holder"), lock_delay=3)
    other = consul_client.session.create(name=unique("other"), lock_delay=0)
    try:
        assert consul_client.kv.put(key, "held", acquire=holder) is True
        consul_client.session.destroy(holder)
        entry = consul_client.kv.get(key)[1]
        # behavior release: the key stays with its value and loses its holder.
        assert entry["Value"] == b"held" and "Session" not in entry
        # sessions doc: after invalidation the lock-delay refuses acquisitions.
        assert consul_client.kv.put(key, "mine", acquire=other) is False
        time.sleep(3.5)
        assert consul_client.kv.put(key, "mine", acquire=other) is True
    finally:
        consul_client.session.destroy(other)


def test_behavior_delete_removes_held_keys(consul_client, unique):
    key = unique("lock")
    session = consul_client.session.create(name=unique("s"), behavior="delete", lock_delay=0)
    assert consul_client.kv.put(key, "v", acquire=session) is True
    consul_client.session.destroy(session)
    assert consul_client.kv.get(key)[1] is None


def test_list_and_node_include_the_session(consul_client, unique):
    name = unique("listed")
    session = consul_client.session.create(name=name)
    try:
        _, listed = consul_client.session.list()
        assert name in [s["Name"] for s in listed]
        node = consul_client.agent.self()["Config"]["NodeName"]
        _, on_node = consul_client.session.node(node)
        assert session in [s["ID"] for s in on_node]
    finally:
        consul_client.session.destroy(session)


def test_session_bound_to_a_check_dies_when_it_goes_critical(consul_client, unique):
    service = unique("svc")
    consul_client.agent.service.register(service, check=consul.Check.ttl("30s"))
    check_id = f"service:{service}"
    try:
        consul_client.agent.check.ttl_pass(check_id)
        session = consul_client.session.create(
            name=unique("bound"), checks=["serfHealth", check_id], lock_delay=0)
        consul_client.agent.check.ttl_fail(check_id)
        # session.mdx: a session is invalidated when any of its health checks turns critical.
        deadline = time.monotonic() + 10
        while consul_client.session.info(session)[1] is not None:
            assert time.monotonic() < deadline, "session not invalidated"
            time.sleep(0.1)
    finally:
        consul_client.agent.service.deregister(service)


def test_ttl_expiry_releases_the_lock_then_lock_delay_applies(consul_client, unique):
    key = unique("ttl-lock")
    holder = consul_client.session.create(name=unique("ttl"), ttl=10, lock_delay=5)
    other = consul_client.session.create(name=unique("next"), lock_delay=0)
    try:
        assert consul_client.kv.put(key, "held", acquire=holder) is True
        index, entry = consul_client.kv.get(key)
        started = time.monotonic()
        # session.mdx: the TTL is a lower bound; Consul may take up to 2x TTL to invalidate.
        while "Session" in entry:
            assert time.monotonic() - started < 25, "session TTL never expired"
            index, entry = consul_client.kv.get(key, index=index, wait="5s")
        assert time.monotonic() - started >= 9
        assert consul_client.kv.put(key, "mine", acquire=other) is False
        time.sleep(5.5)
        assert consul_client.kv.put(key, "mine", acquire=other) is True
    finally:
        consul_client.session.destroy(other)
        consul_client.session.destroy(holder)
