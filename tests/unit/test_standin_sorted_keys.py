"""The stand-in's KV tables keep their keys sorted for prefix reads (journal.SortedTrackedDict):
the key list must match the dict after every kind of change, savepoint rollbacks included."""

from __future__ import annotations

from walle.lab.consul_standin import kv
from walle.lab.consul_standin.journal import Journal, SortedTrackedDict


def _table(*keys: str) -> SortedTrackedDict:
    return SortedTrackedDict(Journal(), "kv", {k: {"ModifyIndex": 1} for k in keys})


def test_keys_stay_sorted_through_sets_pops_and_deletes():
    t = _table("b/2", "a/1", "c")
    t["b/1"] = {"ModifyIndex": 2}
    t["a/1"] = {"ModifyIndex": 3}  # a replaced value: no new key
    del t["c"]
    t.pop("missing", None)
    t.setdefault("a/0", {"ModifyIndex": 4})
    assert t.sorted_keys == sorted(t) == ["a/0", "a/1", "b/1", "b/2"]
    assert list(t.keys_from("b/")) == ["b/1", "b/2"]
    assert list(t.keys_from("a/1")) == ["a/1"]
    assert list(t.keys_from("z")) == []


def test_a_rollback_restores_the_key_list_with_the_values():
    t = _table("a", "b")
    t.savepoint()
    t["c"] = {"ModifyIndex": 2}
    del t["a"]
    t["b"] = {"ModifyIndex": 3}
    t.rollback()
    assert dict(t) == {"a": {"ModifyIndex": 1}, "b": {"ModifyIndex": 1}}
    assert t.sorted_keys == ["a", "b"]


def test_prefix_reads_and_indexes_match_a_full_scan():
    space = kv.KVSpace(_table(), SortedTrackedDict(Journal(), "tombstones"))
    for i, key in enumerate(["walle/allocs/web/1", "walle/allocs/web/0", "walle/jobs/web",
                             "walle/allocs/db/0", "walle/allocsx"], start=2):
        kv.kv_set(space, key, b"v", 0, i)
    kv.kv_delete(space, "walle/allocs/db/0", 9)
    assert [e["Key"] for e in kv.under(space, "walle/allocs/")] == [
        "walle/allocs/web/0", "walle/allocs/web/1"]
    assert kv.list_index(space, "walle/allocs/", 1) == 9  # the tombstone counts
    kv.kv_delete_tree(space, "walle/allocs/", 10)
    assert list(space.entries) == ["walle/jobs/web", "walle/allocsx"]
    assert space.entries.sorted_keys == ["walle/allocsx", "walle/jobs/web"]
