"""The stand-in's write-ahead log (persist.py): recovery, torn records, compaction, group commit.

In-process, on the Store directly: a "crash" is closing the log without the clean-stop
snapshot, which leaves the data dir as a SIGKILL would after the last fsync.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time

import pytest
import requests

from walle.lab.consul_standin import persist, start_in_thread
from walle.lab.consul_standin.persist import Persistence, wal_path
from walle.lab.consul_standin.store import Store

pytestmark = pytest.mark.consul


def open_store(data_dir, compact_bytes: int = persist.COMPACT_BYTES) -> tuple[Store, Persistence]:
    store = Store()
    p = Persistence(store, data_dir, compact_bytes)
    p.open()
    return store, p


def crash(p: Persistence) -> None:
    """Stop the log thread and close the file, writing nothing more (no final snapshot)."""
    p.wal.close()


def put(store: Store, key: str, value: bytes) -> None:
    assert store.kv_put(key, value, 0, None, None, None) is True
    store.wait_durable()


def value_of(store: Store, key: str) -> bytes | None:
    entry = store.kv.entries.get(key)
    return entry["Value"] if entry else None


def test_replay_restores_every_table(tmp_path):
    store, p = open_store(tmp_path)
    store.register_agent_node("n1", "10.0.0.1")
    put(store, "a", b"1")
    sid = store.session_create({"Node": "n1", "LockDelay": "0s"}, "n1")
    assert store.kv_put("lock", b"x", 0, None, sid, None) is True
    store.kv_delete("a", False, None)
    store.event_fire("deploy", b"p", "", "", "")
    store.wait_durable()
    index = store.index
    crash(p)
    again, p2 = open_store(tmp_path)
    try:
        assert value_of(again, "a") is None and again.kv.tombstones["a"] > 0
        assert again.kv.entries["lock"]["Session"] == sid and sid in again.sessions
        assert again.nodes["n1"]["Address"] == "10.0.0.1"
        assert ("n1", "serfHealth") in again.checks
        assert [e["Name"] for e in again.events] == ["deploy"]
        assert again.index == index and again.session_deadline == {}
    finally:
        p2.close()


def test_torn_last_record_is_dropped_and_the_log_goes_on(tmp_path):
    store, p = open_store(tmp_path)
    for i in range(5):
        put(store, f"k{i}", b"v")
    crash(p)
    path = wal_path(tmp_path, p.wal.gen)
    good_size = path.stat().st_size
    torn = persist.encode_record({"i": 99, "t": {}, "l": 0, "c": [["kv", "torn", None]]})
    with open(path, "ab") as fh:
        fh.write(torn[: len(torn) // 2])
    again, p2 = open_store(tmp_path)
    assert sorted(again.kv.entries) == [f"k{i}" for i in range(5)]
    assert path.stat().st_size == good_size  # truncated: new records follow good ones
    put(again, "after", b"1")
    crash(p2)
    third, p3 = open_store(tmp_path)
    try:
        assert value_of(third, "after") == b"1"
    finally:
        p3.close()


def test_corrupt_record_before_good_ones_refuses_to_start(tmp_path):
    store, p = open_store(tmp_path)
    for i in range(3):
        put(store, f"k{i}", b"v")
    crash(p)
    path = wal_path(tmp_path, p.wal.gen)
    data = bytearray(path.read_bytes())
    data[12] ^= 0xFF  # inside the first record's JSON: its checksum no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="corrupt record"):
        open_store(tmp_path)


def test_compaction_writes_a_snapshot_and_drops_old_logs(tmp_path):
    store, p = open_store(tmp_path, compact_bytes=4096)
    for i in range(300):
        put(store, f"key/{i}", b"x" * 50)
    deadline = time.monotonic() + 10
    while p._compacting is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    snap = json.loads((tmp_path / persist.SNAPSHOT_FILE).read_bytes())
    logs = sorted(x.name for x in tmp_path.glob("wal-*.log"))
    assert logs and all(int(n[4:12]) >= snap["wal_gen"] for n in logs)
    assert len(logs) <= 2
    # nothing but the latest generations remains, and all of it together is the state
    crash(p)
    again, p2 = open_store(tmp_path)
    try:
        assert len([k for k in again.kv.entries if k.startswith("key/")]) == 300
        modes = {x.name: stat.S_IMODE(x.stat().st_mode) for x in tmp_path.iterdir()}
        assert set(modes.values()) == {0o600}, modes
    finally:
        p2.close()


def test_concurrent_writers_share_fsyncs(tmp_path, monkeypatch):
    calls = []
    real = os.fdatasync

    def slow_fdatasync(fd):
        calls.append(fd)
        time.sleep(0.005)  # a slow disk: writers arriving meanwhile join the next batch
        real(fd)

    monkeypatch.setattr(persist.os, "fdatasync", slow_fdatasync)
    store, p = open_store(tmp_path)
    calls.clear()

    def writer(n: int) -> None:
        for i in range(20):
            put(store, f"w{n}/{i}", b"v")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(store.kv.entries) == 320
        assert len(calls) < 320 / 2, f"{len(calls)} fsyncs for 320 writes: no group commit"
    finally:
        p.close()


def test_legacy_state_file_is_loaded_once_and_replaced(tmp_path):
    old = Store()
    with old.write():
        old.kv_put("legacy", b"v", 0, None, None, None)
    (tmp_path / persist.LEGACY_STATE_FILE).write_text(json.dumps(old.snapshot()))
    store, p = open_store(tmp_path)
    try:
        assert value_of(store, "legacy") == b"v"
        assert not (tmp_path / persist.LEGACY_STATE_FILE).exists()
        assert (tmp_path / persist.SNAPSHOT_FILE).exists()
    finally:
        p.close()


def test_a_write_that_cannot_be_synced_is_not_acknowledged(tmp_path, monkeypatch):
    standin = start_in_thread(data_dir=tmp_path / "data", dns=None)
    host, port = standin.http_addr
    try:
        def broken_disk(fd):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(persist.os, "fdatasync", broken_disk)
        resp = requests.put(f"http://{host}:{port}/v1/kv/lost", data=b"v", timeout=10)
        assert resp.status_code == 500 and "failed to persist" in resp.text
    finally:
        monkeypatch.undo()
        standin.stop()


def test_a_rolled_back_transaction_replays_to_the_same_state(tmp_path):
    store, p = open_store(tmp_path)
    put(store, "keep", b"old")
    value = "bmV3"  # base64 "new"
    status, _ = store.txn([{"KV": {"Verb": "set", "Key": "added", "Value": value}},
                           {"KV": {"Verb": "delete", "Key": "keep"}},
                           {"KV": {"Verb": "cas", "Key": "keep", "Value": value, "Index": 1}}])
    store.wait_durable()
    assert status == 409
    before = (dict(store.kv.entries), dict(store.kv.tombstones), store.index)
    assert "added" not in before[0] and "keep" not in before[1]
    crash(p)
    again, p2 = open_store(tmp_path)
    try:
        assert (dict(again.kv.entries), dict(again.kv.tombstones), again.index) == before
    finally:
        p2.close()


@pytest.mark.parametrize("cut", ["before the snapshot", "before the old logs went"])
def test_a_crash_mid_compaction_replays_to_the_acknowledged_state(tmp_path, monkeypatch, cut):
    """Compaction switches the log, then writes the snapshot, then deletes the older logs. A
    crash between those steps leaves two logs (and an old or a new snapshot): the restart
    must come back with exactly what was acknowledged, later writes winning."""
    store, p = open_store(tmp_path, compact_bytes=1 << 30)
    put(store, "k/before", b"1")
    put(store, "k/changed", b"old")
    if cut == "before the snapshot":
        monkeypatch.setattr(p, "_write_snapshot", lambda state, gen: None)
    else:  # the snapshot is renamed in place, the older log is still there
        monkeypatch.setattr(persist.wal_path(tmp_path, 1).__class__, "unlink",
                            lambda self, missing_ok=False: None)
    p.compact(wait=True)
    put(store, "k/after", b"2")
    put(store, "k/changed", b"new")
    assert store.kv_delete("k/before", False, None) is True
    store.wait_durable()
    crash(p)
    monkeypatch.undo()
    assert len(list(tmp_path.glob("wal-*.log"))) == 2
    assert (tmp_path / persist.SNAPSHOT_FILE).exists() == (cut != "before the snapshot")
    again, p2 = open_store(tmp_path)
    try:
        assert value_of(again, "k/before") is None
        assert value_of(again, "k/after") == b"2"
        assert value_of(again, "k/changed") == b"new"
        assert again.index == store.index
    finally:
        p2.close()
