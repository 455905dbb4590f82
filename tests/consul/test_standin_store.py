"""The stand-in's timers with a fake clock (stand-in internals, no network, no waiting):
Consul's 2xTTL session invalidation, TTL check expiry and the critical-service reaper
(DeregisterCriticalServiceAfter, minimum 1m, reaper every 30s; docs services/usage/checks)."""

from __future__ import annotations

import pytest

from walle.lab.consul_standin.errors import ConsulError
from walle.lab.consul_standin.store import Store

pytestmark = pytest.mark.consul


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world():
    clock = Clock()
    store = Store(clock=clock)
    store.register_agent_node("n1", "10.77.0.11")
    return store, clock


def _ttl_service(store: Store, ttl: str, deregister: str | None = None) -> None:
    check = {"TTL": ttl}
    if deregister:
        check["DeregisterCriticalServiceAfter"] = deregister
    store.agent_register_service("n1", {"Name": "web", "Port": 80, "Check": check}, False)
    store.agent_ttl_update("n1", "service:web", "passing", "")


def test_session_survives_one_ttl_and_dies_after_two(world):
    store, clock = world
    sid = store.session_create({"TTL": "10s"}, "n1")
    clock.now += 15
    store.tick()
    assert sid in store.sessions
    clock.now += 6
    store.tick()
    assert sid not in store.sessions


def test_renew_restarts_the_ttl(world):
    store, clock = world
    sid = store.session_create({"TTL": "10s"}, "n1")
    clock.now += 19
    store.session_renew(sid)
    clock.now += 19
    store.tick()
    assert sid in store.sessions


def test_ttl_check_expires_only_after_its_ttl(world):
    store, clock = world
    _ttl_service(store, "5s")
    clock.now += 4
    store.tick()
    assert store.checks[("n1", "service:web")]["Status"] == "passing"
    clock.now += 2
    store.tick()
    check = store.checks[("n1", "service:web")]
    assert check["Status"] == "critical" and check["Output"] == "TTL expired"


def test_deregister_critical_after_has_a_one_minute_floor(world):
    store, clock = world
    _ttl_service(store, "5s", deregister="10s")  # raised to the 1m minimum
    clock.now += 6
    store.tick()  # check critical now
    clock.now += 40
    store.tick()
    assert ("n1", "web") in store.services
    clock.now += 60
    store.tick()
    assert ("n1", "web") not in store.services


def test_serf_failure_invalidates_bound_sessions_and_keeps_unbound(world):
    store, _ = world
    bound = store.session_create({}, "n1")
    unbound = store.session_create({"Checks": []}, "n1")
    with store.write():
        store.set_serf_health("n1", alive=False)
    assert bound not in store.sessions and unbound in store.sessions
    with pytest.raises(ConsulError, match="critical"):
        store.session_create({}, "n1")


def test_unchanged_check_does_not_move_indexes(world):
    store, _ = world
    _ttl_service(store, "30s")
    before = store.index
    store.agent_ttl_update("n1", "service:web", "passing", "")
    assert store.index == before


def test_serf_reconcile_like_a_consul_leader(world):
    from walle.lab.consul_standin.serf import apply_members

    store, _ = world  # n1 is an agent node the stand-in plays itself

    def member(name, status):
        return {"name": name, "ip": "10.77.0.20", "port": 7946, "tags": {"walle_cpu": "2"},
                "status": status}

    def serf_health(name):
        return store.checks[(name, "serfHealth")]["Status"]

    apply_members(store, [member("a", "alive"), member("b", "alive")], {"n1"})
    assert serf_health("a") == serf_health("b") == "passing"
    assert store.nodes["a"]["Meta"] == {"walle_cpu": "2"}
    apply_members(store, [member("a", "failed"), member("b", "alive")], {"n1"})
    assert serf_health("a") == "critical"
    apply_members(store, [member("a", "alive"), member("b", "left")], {"n1"})
    assert serf_health("a") == "passing" and "b" not in store.nodes
    apply_members(store, [], {"n1"})  # a reaped; the protected agent node stays
    assert "a" not in store.nodes and "n1" in store.nodes


def test_lock_delay_is_kept_as_given_and_capped_at_60s_when_applied(world):
    """session.mdx LockDelay; Consul's state store keeps the session's LockDelay as given and
    caps the delay it applies to released locks at structs.MaxLockDelay (60s)."""
    store, clock = world
    sid = store.session_create({"LockDelay": "120s"}, "n1")
    assert store.sessions[sid]["LockDelay"] == 120 * 10**9
    assert store.kv_put("locked", b"v", 0, None, sid, None) is True
    store.session_destroy(sid)
    other = store.session_create({}, "n1")
    clock.now += 59
    assert store.kv_put("locked", b"v", 0, None, other, None) is False
    clock.now += 2
    assert store.kv_put("locked", b"v", 0, None, other, None) is True
