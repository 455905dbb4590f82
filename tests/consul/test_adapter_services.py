"""Registration, checks, retries and events through the adapter, expected values from
https://developer.hashicorp.com/consul/api-docs/agent/service, /agent/check, /health, /event."""

from __future__ import annotations

import socket
import time

import pytest

from walle.adapters.consul import (
    ConsulApi,
    ConsulConfig,
    ConsulNotFound,
    ConsulUnreachable,
    RetryPolicy,
    check_id,
    deregister_instance,
    fire_event,
    list_events,
    register_instance,
    service_health,
    update_ttl,
)
from walle.jobspec.model import HealthCheck

pytestmark = pytest.mark.consul


@pytest.fixture
def api(consul_addr):
    return ConsulApi(ConsulConfig.from_env(consul_addr, env={}))


def passing_ids(api, name):
    return [i.id for i in service_health(api, name, passing=True)[1]]


def test_ttl_check_starts_critical_and_follows_updates(api, consul_client, unique):
    name = unique("batch")
    sid = f"{name}-0"
    register_instance(api, sid, name, "127.0.0.1", 9000, tags=("v1",), meta={"slot": "0"},
                      check=HealthCheck(type="ttl", ttl=30, deregister_after=60))
    try:
        checks = consul_client.agent.checks()
        assert check_id(sid) in checks  # a service's single check is service:<id>
        assert checks[check_id(sid)]["Status"] == "critical"  # checks start critical
        assert passing_ids(api, name) == []
        update_ttl(api, check_id(sid), "passing", "ok")
        assert passing_ids(api, name) == [sid]
        _, all_instances = service_health(api, name, passing=False)
        inst = all_instances[0]
        assert (inst.port, inst.tags, inst.meta["slot"]) == (9000, ("v1",), "0")
        update_ttl(api, check_id(sid), "critical", "down")
        assert passing_ids(api, name) == []
    finally:
        deregister_instance(api, sid)
    assert service_health(api, name, passing=False)[1] == []


def test_http_check_follows_the_target(api, probe_url, unique, wait_until):
    port = int(probe_url.rsplit(":", 1)[1])
    name = unique("web")
    good, bad = f"{name}-0", f"{name}-1"
    register_instance(api, good, name, "127.0.0.1", port,
                      check=HealthCheck(type="http", path="/status/200", interval=1, timeout=1))
    register_instance(api, bad, name, "127.0.0.1", port,
                      check=HealthCheck(type="http", path="/status/500", interval=1, timeout=1))
    try:
        # 2xx is passing, anything but 429 is critical.
        wait_until(lambda: passing_ids(api, name) == [good], 10)
        _, instances = service_health(api, name, passing=False)
        assert {i.id: i.status for i in instances} == {good: "passing", bad: "critical"}
    finally:
        deregister_instance(api, good)
        deregister_instance(api, bad)


def test_deregister_of_unknown_service_is_a_noop(api, unique):
    deregister_instance(api, unique("never-registered"))


def test_unreachable_consul_fails_fast_and_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: connection refused
    api = ConsulApi(ConsulConfig.from_env(f"127.0.0.1:{port}", env={}, timeout=1),
                    RetryPolicy(attempts=4, base=0.05, cap=0.2, total=2.0))
    started = time.monotonic()
    with pytest.raises(ConsulUnreachable) as err:
        service_health(api, "web")
    assert time.monotonic() - started < 3
    assert f"127.0.0.1:{port}" in str(err.value) and err.value.attempts <= 4


def test_4xx_is_not_retried(api):
    api.retry = RetryPolicy(attempts=5, base=1.0, cap=1.0, total=10)
    started = time.monotonic()
    with pytest.raises(ConsulNotFound):
        api.call("renew", lambda: api.client.session.renew("c5b8ba6f-5b9c-4f5a-8a54-8f1e6a5d0d8b"))
    assert time.monotonic() - started < 0.9  # no back-off sleep happened


def test_events_fire_and_list(api, unique):
    name = unique("walle-drain")
    event_id = fire_event(api, name, "node1")
    assert event_id
    _, events = list_events(api, name)
    assert [(e.id, e.payload) for e in events] == [(event_id, b"node1")]
