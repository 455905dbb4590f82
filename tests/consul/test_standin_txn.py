"""Transactions, from https://developer.hashicorp.com/consul/api-docs/txn: all operations are
applied or none; a failed transaction answers 409 with Errors [{OpIndex, What}]."""

from __future__ import annotations

import base64

import pytest
import requests

pytestmark = pytest.mark.consul


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _txn(addr: str, ops: list[dict]) -> requests.Response:
    return requests.put(f"http://{addr}/v1/txn", json=ops, timeout=5)


def test_successful_txn_applies_every_op_and_get_returns_values(consul_addr, consul_client,
                                                                unique):
    root = unique("txn")
    resp = _txn(consul_addr, [
        {"KV": {"Verb": "set", "Key": f"{root}/a", "Value": _b64("A")}},
        {"KV": {"Verb": "set", "Key": f"{root}/b", "Value": _b64("B"), "Flags": 7}},
        {"KV": {"Verb": "get", "Key": f"{root}/a"}},
    ])
    assert resp.status_code == 200
    body = resp.json()
    assert body["Errors"] is None and len(body["Results"]) == 3
    # Write results carry the entry without its value; a get returns the value.
    assert body["Results"][0]["KV"]["Value"] is None
    assert body["Results"][2]["KV"]["Value"] == _b64("A")
    # One transaction is one Raft write: every entry it wrote shares one ModifyIndex.
    assert body["Results"][0]["KV"]["ModifyIndex"] == body["Results"][1]["KV"]["ModifyIndex"]
    assert consul_client.kv.get(f"{root}/b")[1]["Flags"] == 7


def test_failed_txn_rolls_back_and_reports_op_index(consul_addr, consul_client, unique):
    root = unique("txn")
    consul_client.kv.put(f"{root}/existing", "old")
    resp = _txn(consul_addr, [
        {"KV": {"Verb": "set", "Key": f"{root}/new", "Value": _b64("N")}},
        {"KV": {"Verb": "delete", "Key": f"{root}/existing"}},
        {"KV": {"Verb": "cas", "Key": f"{root}/existing", "Value": _b64("x"), "Index": 1}},
    ])
    assert resp.status_code == 409
    errors = resp.json()["Errors"]
    assert [e["OpIndex"] for e in errors] == [2] and errors[0]["What"]
    assert consul_client.kv.get(f"{root}/new")[1] is None
    assert consul_client.kv.get(f"{root}/existing")[1]["Value"] == b"old"


def test_check_verbs_guard_the_transaction(consul_addr, consul_client, unique):
    key = unique("txn")
    consul_client.kv.put(key, "v")
    modify = consul_client.kv.get(key)[1]["ModifyIndex"]
    assert _txn(consul_addr, [{"KV": {"Verb": "check-not-exists", "Key": key}}]).status_code == 409
    stale = [{"KV": {"Verb": "check-index", "Key": key, "Index": modify + 1000}},
             {"KV": {"Verb": "set", "Key": key, "Value": _b64("w")}}]
    assert _txn(consul_addr, stale).status_code == 409
    assert consul_client.kv.get(key)[1]["Value"] == b"v"
    fresh = [{"KV": {"Verb": "check-index", "Key": key, "Index": modify}},
             {"KV": {"Verb": "delete-cas", "Key": key, "Index": modify}}]
    assert _txn(consul_addr, fresh).status_code == 200
    assert consul_client.kv.get(key)[1] is None


def test_lock_and_check_session_in_txn(consul_addr, consul_client, unique):
    key = unique("txn-lock")
    session = consul_client.session.create(name=unique("s"))
    try:
        ops = [{"KV": {"Verb": "lock", "Key": key, "Value": _b64("L"), "Session": session}},
               {"KV": {"Verb": "check-session", "Key": key, "Session": session}}]
        resp = _txn(consul_addr, ops)
        assert resp.status_code == 200
        assert resp.json()["Results"][0]["KV"]["LockIndex"] == 1
        other = consul_client.session.create(name=unique("s"))
        try:
            steal = [{"KV": {"Verb": "lock", "Key": key, "Session": other}}]
            assert _txn(consul_addr, steal).status_code == 409
        finally:
            consul_client.session.destroy(other)
    finally:
        consul_client.session.destroy(session)


def test_more_than_128_operations_are_refused(consul_addr, consul_client, unique):
    root = unique("txn-big")
    ops = [{"KV": {"Verb": "set", "Key": f"{root}/{i}", "Value": _b64("v")}} for i in range(129)]
    resp = _txn(consul_addr, ops)
    assert resp.status_code == 413  # txn.mdx: up to 128 operations per transaction
    assert consul_client.kv.get(f"{root}/", keys=True)[1] is None
