"""KV store and blocking queries, expected values from Consul's documentation:
https://developer.hashicorp.com/consul/api-docs/kv and
https://developer.hashicorp.com/consul/api-docs/features/blocking
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

pytestmark = pytest.mark.consul


def test_missing_key_is_404(consul_addr, unique):
    # kv.mdx "Read Key": "If no key exists at the given path, a 404 is returned".
    resp = requests.get(f"http://{consul_addr}/v1/kv/{unique('missing')}", timeout=5)
    assert resp.status_code == 404


def test_put_then_get_returns_documented_fields(consul_client, unique):
    key = unique("kv") + "/a"
    assert consul_client.kv.put(key, "hello", flags=42) is True  # "returns true or false"
    index, entry = consul_client.kv.get(key)
    assert entry["Value"] == b"hello" and entry["Flags"] == 42 and entry["Key"] == key
    assert entry["CreateIndex"] == entry["ModifyIndex"] == int(index)
    assert entry["LockIndex"] == 0 and "Session" not in entry


def test_raw_returns_the_bare_value(consul_addr, consul_client, unique):
    key = unique("kv")
    consul_client.kv.put(key, b"\x00bytes")
    # kv.mdx "raw": "the response is just the raw value of the key, without any encoding".
    assert requests.get(f"http://{consul_addr}/v1/kv/{key}?raw", timeout=5).content == b"\x00bytes"


def test_cas_zero_only_when_absent_and_cas_index_must_match(consul_client, unique):
    key = unique("kv")
    # kv.mdx "cas": "If the index is 0, Consul will only put the key if it does not exist.
    # If the index is non-zero, the key is only set if the index matches the ModifyIndex".
    assert consul_client.kv.put(key, "one", cas=0) is True
    assert consul_client.kv.put(key, "two", cas=0) is False
    _, entry = consul_client.kv.get(key)
    assert consul_client.kv.put(key, "three", cas=entry["ModifyIndex"] + 1000) is False
    assert consul_client.kv.put(key, "three", cas=entry["ModifyIndex"]) is True
    assert consul_client.kv.get(key)[1]["Value"] == b"three"


def test_delete_with_stale_cas_keeps_the_key(consul_client, unique):
    key = unique("kv")
    consul_client.kv.put(key, "v")
    modify = consul_client.kv.get(key)[1]["ModifyIndex"]
    assert consul_client.kv.delete(key, cas=modify + 1000) is False
    assert consul_client.kv.get(key)[1] is not None
    assert consul_client.kv.delete(key, cas=modify) is True
    assert consul_client.kv.get(key)[1] is None


def test_recurse_keys_separator_and_recursive_delete(consul_client, unique):
    root = unique("tree")
    for sub in ("a", "b/x", "b/y", "c/d/e"):
        consul_client.kv.put(f"{root}/{sub}", sub)
    index, entries = consul_client.kv.get(f"{root}/", recurse=True)
    assert [e["Key"] for e in entries] == [f"{root}/{s}" for s in ("a", "b/x", "b/y", "c/d/e")]
    # blocking.mdx: for a recursive read the index is the largest ModifyIndex under the prefix.
    assert int(index) == max(e["ModifyIndex"] for e in entries)
    # kv.mdx "separator": list keys only up to the given separator.
    _, keys = consul_client.kv.get(f"{root}/", keys=True, separator="/")
    assert keys == [f"{root}/a", f"{root}/b/", f"{root}/c/"]
    assert consul_client.kv.delete(f"{root}/b/", recurse=True) is True
    _, keys = consul_client.kv.get(f"{root}/", keys=True)
    assert keys == [f"{root}/a", f"{root}/c/d/e"]


def test_put_answers_with_consul_headers(consul_addr, unique):
    key = unique("kv")
    requests.put(f"http://{consul_addr}/v1/kv/{key}", data=b"x", timeout=5)
    resp = requests.get(f"http://{consul_addr}/v1/kv/{key}", timeout=5)
    # api-docs index: X-Consul-Index, X-Consul-KnownLeader, X-Consul-LastContact.
    assert int(resp.headers["X-Consul-Index"]) >= 1
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert "X-Consul-LastContact" in resp.headers


def test_acquire_sets_session_and_lock_index_release_by_non_holder_fails(consul_client, unique):
    key = unique("lock")
    first = consul_client.session.create(name=unique("s1"))
    second = consul_client.session.create(name=unique("s2"))
    try:
        # kv.mdx "acquire": on success the key's Session is set and LockIndex incremented.
        assert consul_client.kv.put(key, "leader-1", acquire=first) is True
        entry = consul_client.kv.get(key)[1]
        assert entry["Session"] == first and entry["LockIndex"] == 1
        # Re-acquiring by the holder updates the value without incrementing LockIndex.
        assert consul_client.kv.put(key, "leader-1b", acquire=first) is True
        assert consul_client.kv.get(key)[1]["LockIndex"] == 1
        assert consul_client.kv.put(key, "x", acquire=second) is False
        # "release": "This has no effect if the session is not the current holder".
        assert consul_client.kv.put(key, "x", release=second) is False
        assert consul_client.kv.get(key)[1]["Session"] == first
        assert consul_client.kv.put(key, "free", release=first) is True
        entry = consul_client.kv.get(key)[1]
        assert "Session" not in entry and entry["LockIndex"] == 1
        assert consul_client.kv.put(key, "leader-2", acquire=second) is True
        assert consul_client.kv.get(key)[1]["LockIndex"] == 2
    finally:
        consul_client.session.destroy(first)
        consul_client.session.destroy(second)


def test_blocking_get_returns_after_a_write_with_a_higher_index(consul_client, unique):
    key = unique("watch")
    consul_client.kv.put(key, "v1")
    index, _ = consul_client.kv.get(key)
    timer = threading.Timer(0.5, consul_client.kv.put, args=(key, "v2"))
    timer.start()
    started = time.monotonic()
    try:
        new_index, entry = consul_client.kv.get(key, index=index, wait="10s")
    finally:
        timer.join()
    assert time.monotonic() - started < 5
    assert int(new_index) > int(index) and entry["Value"] == b"v2"


def test_blocking_get_without_change_returns_after_wait(consul_client, unique):
    key = unique("watch")
    consul_client.kv.put(key, "v1")
    index, _ = consul_client.kv.get(key)
    started = time.monotonic()
    new_index, entry = consul_client.kv.get(key, index=index, wait="1s")
    elapsed = time.monotonic() - started
    # blocking.mdx: waits up to `wait` plus jitter of up to wait/16 and returns the same index.
    assert 0.9 <= elapsed < 1.0 + 1 / 16 + 1.0
    assert new_index == index and entry["Value"] == b"v1"


def test_recurse_blocking_query_wakes_on_delete_under_prefix(consul_client, unique):
    root = unique("tree")
    consul_client.kv.put(f"{root}/a", "1")
    consul_client.kv.put(f"{root}/b", "2")
    index, _ = consul_client.kv.get(f"{root}/", recurse=True)
    timer = threading.Timer(0.3, consul_client.kv.delete, args=(f"{root}/a",))
    timer.start()
    try:
        new_index, entries = consul_client.kv.get(f"{root}/", recurse=True, index=index,
                                                  wait="10s")
    finally:
        timer.join()
    assert int(new_index) > int(index)
    assert [e["Key"] for e in entries] == [f"{root}/b"]
