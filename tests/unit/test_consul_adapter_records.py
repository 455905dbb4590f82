"""Reading records from KV (issue 9, item 8): one entry that is not a record is skipped and
reported with its key and a reason; the others are read. A fake KV, no Consul."""

import json

import pytest

from walle.adapters.consul.state import (
    BadRecord,
    StateStore,
    Unreadable,
    decode_alloc,
    decode_job,
    parse_alloc_key,
)


def kv(key, value, index=7):
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return {"Key": key, "Value": raw, "ModifyIndex": index}


class FakeKv:
    def __init__(self, entries):
        self.entries = entries

    def get(self, prefix, recurse=False, index=None, wait=None, keys=False):
        return 42, [e for e in self.entries if e["Key"].startswith(prefix)]


class FakeApi:
    address = "http://fake"

    def __init__(self, entries):
        self.client = type("C", (), {"kv": FakeKv(entries)})()

    def call(self, what, fn):
        return fn()


GOOD_JOB = kv("walle/jobs/web", {"version": "v1", "spec": {"name": "web"}})
GOOD_ALLOC = kv("walle/allocs/web/0", {"node": "node1", "state": "running"})


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("walle/allocs/x/abc", {"node": "n", "state": "running"}, "not a slot key"),
    ("walle/allocs/x", {"node": "n", "state": "running"}, "not a slot key"),
    ("walle/allocs/x/-1", {"node": "n", "state": "running"}, "not a slot key"),
    ("walle/allocs/x/0", b"{not json", "not JSON"),
    ("walle/allocs/x/0", b"\xff\xfe", "not JSON"),
    ("walle/allocs/x/0", b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ("walle/allocs/x/0", [1, 2], "JSON list, not an object"),
    ("walle/allocs/x/0", {"state": "running"}, "'node' is missing"),
    ("walle/allocs/x/0", {"node": 5, "state": "running"}, "'node' is a int"),
    ("walle/allocs/x/0", {"node": "n", "state": "running", "grant": [1]}, "'grant'"),
])
def test_a_bad_alloc_entry_is_skipped_with_its_key_and_reason(key, value, reason):
    with pytest.raises(BadRecord, match=reason):
        decode_alloc(kv(key, value))
    unreadable: list[Unreadable] = []
    _, allocs = StateStore(FakeApi([GOOD_ALLOC, kv(key, value)])).allocs(unreadable=unreadable)
    assert list(allocs) == [("web", 0)]
    assert [u.key for u in unreadable] == [key] and reason in unreadable[0].reason


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("walle/jobs/junk", [1, 2], "not an object"),
    ("walle/jobs/junk", b"{not json", "not JSON"),
    ("walle/jobs/junk", {"version": "x"}, "'spec' is missing"),
    ("walle/jobs/junk", {"spec": "web"}, "'spec' is a str"),
    ("walle/jobs/junk", {"spec": {}, "previous": "v0"}, "'previous'"),
    ("walle/jobs/a/b", {"spec": {}}, "not a job key"),
])
def test_a_bad_job_entry_is_skipped_with_its_key_and_reason(key, value, reason):
    with pytest.raises(BadRecord, match=reason):
        decode_job(kv(key, value))
    unreadable: list[Unreadable] = []
    _, jobs = StateStore(FakeApi([GOOD_JOB, kv(key, value)])).jobs(unreadable=unreadable)
    assert list(jobs) == ["web"]
    assert unreadable == [Unreadable(key, unreadable[0].reason)]


def test_reading_without_a_list_still_skips():
    _, jobs = StateStore(FakeApi([GOOD_JOB, kv("walle/jobs/junk", [1])])).jobs()
    assert list(jobs) == ["web"]


def test_alloc_keys():
    assert parse_alloc_key("walle/allocs/web/12") == ("web", 12)
    assert parse_alloc_key("walle/allocs/web/１") is None  # a non-ASCII digit
    assert parse_alloc_key("walle/allocs/a/b/1") is None
    assert parse_alloc_key("walle/jobs/web") is None
