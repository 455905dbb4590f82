"""LeaderLock against Consul's documented session/lock semantics
(https://developer.hashicorp.com/consul/docs/dynamic-app-config/sessions)."""

from __future__ import annotations

import threading
import time

import pytest

from walle.adapters.consul import ConsulApi, ConsulConfig, LeaderLock

pytestmark = pytest.mark.consul


@pytest.fixture
def api(consul_addr):
    return ConsulApi(ConsulConfig.from_env(consul_addr, env={}))


def test_handover_after_the_holder_session_dies(api, consul_client, unique, wait_until):
    key = unique("walle-test/leader")
    lost = threading.Event()
    a = LeaderLock(api, key=key, name="a", ttl=10, lock_delay=1, on_lost=lost.set)
    b = LeaderLock(api, key=key, name="b", ttl=10, lock_delay=1)
    try:
        assert a.acquire() and a.is_leader
        assert b.acquire() is False and not b.is_leader
        assert consul_client.kv.get(key)[1]["Session"] == a.session_id
        killed = time.monotonic()
        consul_client.session.destroy(a.session_id)  # as if a's node failed
        assert b.wait_for_leadership(timeout=10)
        waited = time.monotonic() - killed
        # The lock delay (1s) refuses acquisitions after an invalidation.
        assert 0.9 <= waited < 6, waited
        assert consul_client.kv.get(key)[1]["Session"] == b.session_id
        # a notices at its next renewal (TTL/2 = 5s) and reports the loss once.
        wait_until(lost.is_set, 9)
        assert not a.is_leader and a.session_id is None
    finally:
        a.step_down()
        b.step_down()
        consul_client.kv.delete(key)


def test_step_down_releases_without_lock_delay(api, consul_client, unique):
    key = unique("walle-test/leader")
    a = LeaderLock(api, key=key, name="a", lock_delay=5)
    b = LeaderLock(api, key=key, name="b", lock_delay=5)
    try:
        assert a.acquire()
        sid = a.session_id
        started = time.monotonic()
        a.step_down()
        assert not a.is_leader
        assert consul_client.session.info(sid)[1] is None  # destroyed
        # An explicit ?release is not an invalidation: no lock delay.
        assert b.wait_for_leadership(timeout=3)
        assert time.monotonic() - started < 3
    finally:
        b.step_down()
        consul_client.kv.delete(key)


def test_renewal_keeps_the_session_past_its_ttl(api, consul_client, unique):
    key = unique("walle-test/leader")
    a = LeaderLock(api, key=key, name="a", ttl=10, lock_delay=0)
    try:
        assert a.acquire()
        assert a.renew_once() >= 10
        _, info = consul_client.session.info(a.session_id)
        assert info["TTL"] == "10s" and info["Behavior"] == "release"
        assert info["LockDelay"] == 0
    finally:
        a.step_down()
        consul_client.kv.delete(key)


def test_wait_for_leadership_times_out_while_held(api, consul_client, unique):
    key = unique("walle-test/leader")
    a = LeaderLock(api, key=key, name="a", lock_delay=0)
    b = LeaderLock(api, key=key, name="b", lock_delay=0)
    try:
        assert a.acquire()
        started = time.monotonic()
        assert b.wait_for_leadership(timeout=1.5) is False
        assert 1.4 <= time.monotonic() - started < 4
    finally:
        a.step_down()
        b.step_down()
        consul_client.kv.delete(key)


def test_a_lock_can_be_won_again_after_stepping_down(api, consul_client, unique):
    key = unique("walle-test/leader")
    a = LeaderLock(api, key=key, name="a", lock_delay=0)
    try:
        assert a.acquire()
        a.step_down()
        assert a.wait_for_leadership(timeout=3) and a.is_leader
        assert consul_client.kv.get(key)[1]["Session"] == a.session_id
    finally:
        a.step_down()
        consul_client.kv.delete(key)
