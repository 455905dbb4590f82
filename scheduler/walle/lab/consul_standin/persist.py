"""--data-dir: a write is on disk before the stand-in answers it, as Consul answers a write only
after the Raft commit.

Layout (directory 0700, files 0600):

- `wal-<gen>.log`: the write-ahead log. One line per committed write:
  `<crc32 as 8 hex digits> <JSON record>\\n`, the record holding the new value of every key
  the write touched (store.Store.commit). One flusher thread appends and fdatasyncs; every
  write waiting at that moment shares the fsync (group commit).
- `snapshot.json`: `{"version", "wal_gen", "state"}`, the whole state when log generation
  `wal_gen` began. Compaction, once the current log passes `compact_bytes`: under the store
  lock take the state and switch the log to a new generation; then, in the background, write
  the snapshot to a temp file, fsync, rename, fsync the directory, and delete older logs.

Recovery: load the snapshot, replay every log of its generation and later, in order. A record
cut short by a crash (no newline, bad checksum) at the end of a log was never acknowledged:
it is dropped and the log truncated there. A bad record followed by good ones is corruption:
the stand-in refuses to start and says which file. `standin-state.json` (the format before the
log) is loaded once and replaced by a snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import zlib
from pathlib import Path

from walle.files import fsync_dir, write_private_atomically

from .errors import PersistError
from .store import SNAPSHOT_VERSION, Persister, Store

log = logging.getLogger("walle.consul_standin.persist")
SNAPSHOT_FILE = "snapshot.json"
LEGACY_STATE_FILE = "standin-state.json"
COMPACT_BYTES = 8 * 1024 * 1024
_WAL_NAME = re.compile(r"^wal-(\d+)\.log$")


def wal_path(data_dir: Path, gen: int) -> Path:
    return data_dir / f"wal-{gen:08d}.log"


def encode_record(record: dict) -> bytes:
    body = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def read_log(path: Path) -> tuple[list[dict], int]:
    """(records, length of the good prefix). A bad last record is dropped; a bad record
    before good ones raises ValueError naming the file and offset."""
    data = path.read_bytes()
    records: list[dict] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        record = _decode_line(data[pos:end]) if end >= 0 else None
        if record is None:
            rest = data[end + 1:] if end >= 0 else b""
            if any(_decode_line(line) is not None for line in rest.split(b"\n")):
                raise ValueError(f"{path}: corrupt record at byte {pos} followed by valid ones; "
                                 f"move the data dir away to start empty")
            log.warning("%s: dropping a torn last record at byte %d (%d bytes, never "
                        "acknowledged)", path, pos, len(data) - pos)
            return records, pos
        records.append(record)
        pos = end + 1
    return records, pos


def _decode_line(line: bytes) -> dict | None:
    crc, sep, body = line.partition(b" ")
    if not sep or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_log(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return fd


class _Rotate:
    """A marker in the flusher's queue: records after it go to log generation `gen`."""

    def __init__(self, gen: int):
        self.gen = gen


class WriteAheadLog:
    """Append-only log with group commit: append() queues a record (under the store lock, so
    the log order is the commit order); one flusher thread writes everything queued with a
    single fdatasync; wait(seq) returns once record `seq` is on disk."""

    def __init__(self, data_dir: Path, gen: int):
        self.data_dir = data_dir
        self.gen = gen
        self._fd = _open_log(wal_path(data_dir, gen))
        self.size = os.fstat(self._fd).st_size
        fsync_dir(data_dir)
        self._cond = threading.Condition()
        self._queue: list[bytes | _Rotate] = []
        self._appended = 0
        self._durable = 0
        self._failed: OSError | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="consul-standin-wal",
                                        daemon=True)
        self._thread.start()

    def append(self, data: bytes) -> int:
        with self._cond:
            if self._closing:
                raise PersistError("the stand-in is stopping")
            self._queue.append(data)
            self._appended += 1
            self.size += len(data)
            self._cond.notify_all()
            return self._appended

    def rotate(self) -> int:
        """Start the next generation: records appended from now on go to a new file."""
        with self._cond:
            self.gen += 1
            self.size = 0
            self._queue.append(_Rotate(self.gen))
            self._cond.notify_all()
            return self.gen

    def wait(self, seq: int) -> None:
        with self._cond:
            while self._durable < seq and self._failed is None:
                self._cond.wait()
            if self._durable < seq:
                raise PersistError(f"failed to persist the write: {self._failed}")

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        os.close(self._fd)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, upto, self._queue = self._queue, self._appended, []
            try:
                self._write(batch)
            except OSError as exc:
                log.error("write-ahead log %s: %s; writes now fail (500) until restart",
                          wal_path(self.data_dir, self.gen), exc)
                with self._cond:
                    self._failed = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._durable = upto
                self._cond.notify_all()

    def _write(self, batch: list[bytes | _Rotate]) -> None:
        chunk: list[bytes] = []
        for item in batch:
            if isinstance(item, _Rotate):
                self._flush(chunk)
                chunk = []
                os.close(self._fd)
                self._fd = _open_log(wal_path(self.data_dir, item.gen))
                fsync_dir(self.data_dir)
            else:
                chunk.append(item)
        self._flush(chunk)

    def _flush(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        view = memoryview(b"".join(chunk))
        while view:
            view = view[os.write(self._fd, view):]
        os.fdatasync(self._fd)


class Persistence(Persister):
    """Loads the data dir into the store, then logs every commit and compacts the log."""

    def __init__(self, store: Store, data_dir: str | os.PathLike,
                 compact_bytes: int = COMPACT_BYTES):
        self.store = store
        self.dir = Path(data_dir)
        self.compact_bytes = compact_bytes
        self.wal: WriteAheadLog | None = None
        self._compacting: threading.Thread | None = None

    # --- start ---------------------------------------------------------------------------
    def open(self) -> bool:
        """Recover the state (True when there was one) and start logging."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        for path in self.dir.iterdir():
            if path.is_file():
                os.chmod(path, 0o600)
        try:
            loaded, gen, legacy = self._load()
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise SystemExit(f"--data-dir: cannot load {self.dir}: {exc}") from exc
        self.wal = WriteAheadLog(self.dir, gen)
        self.store.persister = self
        if legacy:
            self.compact(wait=True)
            (self.dir / LEGACY_STATE_FILE).unlink()
        return loaded

    def _load(self) -> tuple[bool, int, bool]:
        """(state found, log generation to append to, loaded from the legacy file)."""
        snapshot, legacy = self.dir / SNAPSHOT_FILE, self.dir / LEGACY_STATE_FILE
        gen, loaded, from_legacy = 1, False, False
        if snapshot.exists():
            data = json.loads(snapshot.read_bytes())
            if data.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"{snapshot}: version {data.get('version')!r} is not "
                                 f"{SNAPSHOT_VERSION}")
            self.store.restore(data["state"])
            gen, loaded = int(data["wal_gen"]), True
            legacy.unlink(missing_ok=True)  # migrated; the stop before removing it was cut short
        elif legacy.exists():
            self.store.restore(json.loads(legacy.read_bytes()))
            loaded = from_legacy = True
        logs = self._logs()
        for old in [g for g in logs if g < gen]:
            wal_path(self.dir, old).unlink()  # left over from a compaction cut short
        for g in sorted(g for g in logs if g >= gen):
            path = wal_path(self.dir, g)
            records, good = read_log(path)
            if good < path.stat().st_size:
                _truncate(path, good)
            for record in records:
                self.store.apply_record(record)
            loaded = loaded or bool(records)
            gen = g
        self.store.arm_session_timers()
        return loaded, gen, from_legacy

    def _logs(self) -> list[int]:
        return [int(m.group(1)) for p in self.dir.iterdir() if (m := _WAL_NAME.match(p.name))]

    # --- Persister -------------------------------------------------------------------------
    def log(self, record: dict) -> int:
        """Called by the store under its lock at the end of every write."""
        seq = self.wal.append(encode_record(record))
        if self.wal.size > self.compact_bytes and self._compacting is None:
            self.compact()
        return seq

    def wait(self, seq: int) -> None:
        self.wal.wait(seq)

    # --- compaction ------------------------------------------------------------------------
    def compact(self, wait: bool = False) -> None:
        """Snapshot the state as of now and start a new log generation; the snapshot is written
        in the background (or now, with wait=True)."""
        with self.store.cond:
            state = self.store.snapshot()
            gen = self.wal.rotate()
        thread = threading.Thread(target=self._write_snapshot, args=(state, gen),
                                  name="consul-standin-compact", daemon=True)
        self._compacting = thread
        thread.start()
        if wait:
            thread.join()

    def _write_snapshot(self, state: dict, gen: int) -> None:
        try:
            data = json.dumps({"version": SNAPSHOT_VERSION, "wal_gen": gen, "state": state},
                              separators=(",", ":")).encode()
            write_private_atomically(self.dir / SNAPSHOT_FILE, data)
            for old in [g for g in self._logs() if g < gen]:
                wal_path(self.dir, old).unlink(missing_ok=True)
        except OSError:
            log.exception("compaction into %s failed; the log keeps everything",
                          self.dir / SNAPSHOT_FILE)
        finally:
            self._compacting = None

    def close(self) -> None:
        """Clean stop: everything logged is flushed, then one snapshot makes the restart quick."""
        if self.wal is None:
            return
        running = self._compacting
        if running is not None:
            running.join()
        self.compact(wait=True)
        self.wal.close()
        self.store.persister = None
        self.wal = None
