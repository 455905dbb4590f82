"""Catalog operations in a transaction, from https://developer.hashicorp.com/consul/api-docs/txn
(Node, Service and Check ops): applied with the KV ops of the same transaction, all or none."""

from __future__ import annotations

import base64

import pytest
import requests

pytestmark = pytest.mark.consul


def _txn(addr: str, ops: list[dict]) -> requests.Response:
    return requests.put(f"http://{addr}/v1/txn", json=ops, timeout=5)


def _instance_ops(node: str, sid: str, status: str = "passing") -> list[dict]:
    return [{"Service": {"Verb": "set", "Node": node,
                         "Service": {"ID": sid, "Service": "txn-web", "Port": 8080}}},
            {"Check": {"Verb": "set", "Check": {"Node": node, "CheckID": f"service:{sid}",
                                                "Name": "web", "Status": status,
                                                "ServiceID": sid}}}]


def test_node_service_and_check_ops_register_in_one_write(consul_addr, consul_client, unique):
    node = unique("txn-node")
    resp = _txn(consul_addr, [
        {"Node": {"Verb": "set", "Node": {"Node": node, "Address": "10.77.99.1",
                                          "Meta": {"walle_cpu": "4"}}}},
        *_instance_ops(node, f"{node}-a"), *_instance_ops(node, f"{node}-b", "critical")])
    assert resp.status_code == 200, resp.text
    results = resp.json()["Results"]
    assert [next(iter(r)) for r in results] == ["Node", "Service", "Check", "Service", "Check"]
    assert len({next(iter(r.values()))["ModifyIndex"] for r in results}) == 1  # one index
    _, entry = consul_client.catalog.node(node)
    assert entry["Node"]["Meta"] == {"walle_cpu": "4"}
    assert sorted(entry["Services"]) == [f"{node}-a", f"{node}-b"]
    _, checks = consul_client.health.node(node)
    assert {c["ServiceID"]: c["Status"] for c in checks} == {f"{node}-a": "passing",
                                                             f"{node}-b": "critical"}
    resp = _txn(consul_addr, [{"Service": {"Verb": "delete", "Node": node,
                                           "Service": {"ID": f"{node}-a"}}}])
    assert resp.status_code == 200, resp.text
    _, checks = consul_client.health.node(node)  # its checks go with the service
    assert [c["ServiceID"] for c in checks] == [f"{node}-b"]


def test_a_service_on_a_missing_node_rolls_back_the_whole_transaction(consul_addr,
                                                                      consul_client, unique):
    key, node = unique("txn-cat"), unique("txn-missing")
    resp = _txn(consul_addr, [
        {"KV": {"Verb": "set", "Key": key, "Value": base64.b64encode(b"x").decode()}},
        *_instance_ops(node, f"{node}-a")])
    assert resp.status_code == 409
    errors = resp.json()["Errors"]
    assert errors[0]["OpIndex"] == 1 and "node" in errors[0]["What"].lower()
    assert consul_client.kv.get(key)[1] is None
    assert consul_client.catalog.node(node)[1] is None


def test_a_check_naming_an_unregistered_service_fails(consul_addr, consul_client, unique):
    node = unique("txn-node")
    consul_client.catalog.register(node, "10.77.99.2")
    resp = _txn(consul_addr, [{"Check": {"Verb": "set", "Check": {
        "Node": node, "CheckID": "c1", "Name": "c1", "Status": "passing",
        "ServiceID": "nope"}}}])
    assert resp.status_code == 409
    assert "service" in resp.json()["Errors"][0]["What"].lower()
