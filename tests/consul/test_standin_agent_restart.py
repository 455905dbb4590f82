"""A node's Consul agent restarting (a graceful Serf leave, then a join) keeps the services and
checks registered through it, as a real agent does: it persists its local state in its data
dir and re-registers it by anti-entropy when it is back. Without that, a chaos run's agent
restart left a running instance with no registration, which nothing ever healed."""

from __future__ import annotations

import pytest

from walle.lab.consul_standin.serf import AgentStash, apply_members
from walle.lab.consul_standin.store import Store

pytestmark = pytest.mark.consul


def member(name: str, status: str) -> dict:
    return {"name": name, "ip": "10.77.0.12", "port": 7946, "tags": {}, "status": status}


def test_an_agent_that_leaves_and_rejoins_gets_its_services_and_checks_back():
    store, stash = Store(), AgentStash()
    apply_members(store, [member("node2", "alive")], set(), stash)
    store.agent_register_service("node2", {
        "ID": "web-1", "Name": "web", "Port": 8080, "Address": "10.77.0.12",
        "Check": {"HTTP": "http://10.77.0.12:8080/", "Interval": "1s"}}, True)
    apply_members(store, [member("node2", "left")], set(), stash)
    assert "node2" not in store.nodes and ("node2", "web-1") not in store.services

    apply_members(store, [member("node2", "alive")], set(), stash)
    assert store.services[("node2", "web-1")]["Port"] == 8080
    check = store.checks[("node2", "service:web-1")]
    assert check["Status"] == "critical"  # until the check runs again, as after a restart
    assert store.check_defs[("node2", "service:web-1")]["Type"] == "http"


def test_a_node_that_failed_keeps_its_services_and_nothing_is_restored_twice():
    store, stash = Store(), AgentStash()
    apply_members(store, [member("node2", "alive")], set(), stash)
    store.agent_register_service("node2", {"ID": "web-1", "Name": "web", "Port": 8080,
                                           "Address": "10.77.0.12"}, True)
    apply_members(store, [member("node2", "failed")], set(), stash)
    assert ("node2", "web-1") in store.services
    store.agent_deregister_service("node2", "web-1")  # the scheduler stops it meanwhile
    apply_members(store, [member("node2", "alive")], set(), stash)
    assert ("node2", "web-1") not in store.services
