"""LeaderLock against Consul's documented session/lock semantics
(https://developer.hashicorp.com/consul/docs/dynamic-app-config/sessions)."""

from __future__ import annotations

import json
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


def _standby(lock: LeaderLock, timeout: float) -> tuple[threading.Thread, dict]:
    """Run `lock.wait_for_leadership(timeout)` in a thread; returns it and its outcome."""
    outcome: dict = {}

    def wait() -> None:
        try:
            outcome["won"] = lock.wait_for_leadership(timeout=timeout)
            outcome["at"] = time.monotonic()
        except Exception as err:  # surfaced by the test's assertions
            outcome["error"] = err

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, outcome


def test_a_standby_that_wins_late_keeps_its_session_and_leadership(
        api, consul_client, unique, wait_until):
    """Chaos finding 3. Consul invalidates a session 2 x TTL after its last renewal; a standby
    that blocks on the key without renewing and wins just before that (here 17.5 s into a 20 s
    life) must not lose the lock TTL/2 later. TTL 10 s is Consul's minimum."""
    key = unique("walle-test/leader")
    lost = threading.Event()
    a = LeaderLock(api, key=key, name="a", ttl=10, lock_delay=0)
    b = LeaderLock(api, key=key, name="b", ttl=10, lock_delay=0, on_lost=lost.set)
    try:
        assert a.acquire()
        thread, outcome = _standby(b, timeout=40)
        wait_until(lambda: b.session_id, 5, 0.01)
        standby_since = time.monotonic()  # b's session exists: it dies by now + 20 s unrenewed
        time.sleep(17.5)
        a.step_down()
        thread.join(timeout=10)
        assert outcome.get("won") is True, outcome
        assert outcome["at"] - standby_since < 19.5  # won before the unrenewed session's end
        time.sleep(max(0.0, outcome["at"] + 10 / 2 + 2 - time.monotonic()))  # past 1st renewal
        assert not lost.is_set() and b.is_leader
        assert consul_client.session.info(b.session_id)[1] is not None
        assert consul_client.kv.get(key)[1]["Session"] == b.session_id
    finally:
        a.step_down()
        b.step_down()
        consul_client.kv.delete(key)


def test_a_standby_keeps_its_session_alive_and_replaces_an_invalidated_one(
        api, consul_client, unique, wait_until):
    """A standby renews its session while it waits (it lives past 2 x TTL), and when the
    session is invalidated anyway (expired, or its node's serfHealth went critical) it creates
    a new one rather than contending with a dead one."""
    key = unique("walle-test/leader")
    a = LeaderLock(api, key=key, name="a", ttl=10, lock_delay=0)
    b = LeaderLock(api, key=key, name="b", ttl=10, lock_delay=0)
    try:
        assert a.acquire()
        thread, outcome = _standby(b, timeout=60)
        first = wait_until(lambda: b.session_id, 5, 0.01)
        time.sleep(22)  # past 2 x TTL: an unrenewed session is gone by now
        assert consul_client.session.info(first)[1] is not None, "standby session expired"
        consul_client.session.destroy(first)  # as an invalidation would
        second = wait_until(lambda: b.session_id not in (None, first) and b.session_id, 8)
        assert consul_client.session.info(second)[1] is not None
        assert "error" not in outcome and thread.is_alive()
        a.step_down()
        thread.join(timeout=10)
        assert outcome.get("won") is True and b.is_leader, outcome
        assert consul_client.kv.get(key)[1]["Session"] == b.session_id
    finally:
        a.step_down()
        b.step_down()
        consul_client.kv.delete(key)


def _register_node(api: ConsulApi, node: str, serf_health: str) -> None:
    body = {"Node": node, "Address": "127.0.0.9",
            "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status",
                      "Status": serf_health}}
    code, answer = api.raw("put", "/v1/catalog/register", data=json.dumps(body))
    assert code == 200, answer


def test_a_standby_whose_node_failed_contends_again_once_it_is_back(
        api, consul_client, unique, wait_until):
    """serfHealth critical invalidates the standby's session (NodeChecks) and forbids a new one:
    waiting raises (the service backs off and calls again); once the node passes again the
    standby makes a new session and wins when the holder lets go."""
    key, node = unique("walle-test/leader"), unique("walle-test-node")
    _register_node(api, node, "passing")
    a = LeaderLock(api, key=key, name="a", ttl=10, lock_delay=0)
    b = LeaderLock(api, key=key, name="b", ttl=10, lock_delay=0, node=node)
    try:
        assert a.acquire()
        thread, outcome = _standby(b, timeout=30)
        first = wait_until(lambda: b.session_id, 5, 0.01)
        _register_node(api, node, "critical")
        assert consul_client.session.info(first)[1] is None  # invalidated with its node
        thread.join(timeout=10)  # the next standby renewal (TTL/2) finds it gone
        assert "critical" in str(outcome.get("error")), outcome
        _register_node(api, node, "passing")
        thread, outcome = _standby(b, timeout=30)
        second = wait_until(lambda: b.session_id, 5, 0.01)
        assert second != first
        a.step_down()
        thread.join(timeout=10)
        assert outcome.get("won") is True and b.is_leader, outcome
        assert consul_client.kv.get(key)[1]["Session"] == second
    finally:
        a.step_down()
        b.step_down()
        consul_client.kv.delete(key)
        consul_client.catalog.deregister(node)
