"""Desired state (jobs) and actual state (allocations) in Consul KV.

Layout (docs/architecture.md): walle/jobs/<name> = {"version": digest, "spec": {...}},
walle/allocs/<job>/<slot> = {"node", "state", "version", "grant"}. Every update is a
check-and-set against the ModifyIndex the writer last read; a key that must not exist yet is
written with index 0. Several keys go through one `/v1/txn`.

Transactions are chunked at TXN_MAX_OPS operations (64: the limit of older Consul versions,
newer ones take 128). Each chunk is all-or-nothing; a write larger than one chunk is NOT
atomic as a whole: chunks before a failed one stay applied. Because every op is a CAS, the
caller re-reads and retries safely.

Leader writes carry a `check-session` op on the leader key in every chunk, so a deposed leader
(whose session was invalidated or who lost the lock) cannot write anything.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypeVar

from walle.adapters.consul.api import ConsulApi
from walle.adapters.consul.errors import ConsulError, NotLeader
from walle.adapters.consul.watch import Watch
from walle.jobspec.encoding import spec_to_data
from walle.jobspec.model import JobSpec
from walle.naming import (
    ALLOCS_PREFIX,
    DONE_PREFIX,
    EVENTS_PREFIX,
    JOBS_PREFIX,
    LEADER_KEY,
    NODES_PREFIX,
    PACKAGES_PREFIX,
    alloc_key,
    done_key,
    drain_key,
    events_key,
    job_allocs_prefix,
    job_key,
    job_runs_prefix,
    package_key,
    parse_alloc_key,
    parse_done_key,
    parse_drain_key,
    parse_events_key,
    parse_job_key,
    parse_package_key,
    parse_runs_key,
)
from walle.naming import (
    PLACEMENT_CONFIG_KEY as PLACEMENT_CONFIG,
)

TXN_MAX_OPS = 64
T = TypeVar("T")
VALUE_LIMIT = 512 * 1024  # Consul's KV value limit


@dataclass(frozen=True)
class StoredJob:
    name: str
    version: str  # JobSpec.digest()
    spec: Mapping[str, Any]  # walle.jobspec.spec_to_data(); parse_spec turns it back into a JobSpec
    modify_index: int
    # the version this one replaced ({"version", "spec"}), kept for automatic rollback
    previous: Mapping[str, Any] | None = None
    rolled_back_from: str | None = None  # set when the scheduler rolled a failing version back


@dataclass(frozen=True)
class Allocation:
    job: str
    slot: int
    node: str
    state: str  # e.g. pending, running, failed, stopped (the service layer owns the words)
    version: str = ""  # digest of the spec the instance runs
    grant: Mapping[str, float] = field(default_factory=dict)  # elastic grant: cpu, memory...
    modify_index: int = 0  # 0 = not stored yet
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields the service layer owns

    @property
    def key(self) -> str:
        return alloc_key(self.job, self.slot)

    def to_json(self) -> dict[str, Any]:
        return {**self.extra, "node": self.node, "state": self.state, "version": self.version,
                "grant": dict(self.grant)}

    @classmethod
    def from_json(cls, job: str, slot: int, body: Mapping[str, Any],
                  modify_index: int = 0) -> Allocation:
        """The inverse of to_json: the adapter's own fields out of the record's body, the
        rest kept as it is in `extra` (the service layer owns it)."""
        return cls(job=job, slot=slot, node=body["node"], state=body["state"],
                   version=body.get("version", ""), grant=body.get("grant") or {},
                   modify_index=modify_index,
                   extra={k: v for k, v in body.items() if k not in _ALLOC_FIELDS})


@dataclass(frozen=True)
class BatchCommit:
    """A node's record that a batch run succeeded (walle/done/<job>/<slot>)."""

    job: str
    slot: int
    node: str
    attempt: str  # the placement it ran (records.attempt_of: the allocation's `since`)
    modify_index: int

    @property
    def key(self) -> str:
        return done_key(self.job, self.slot)


@dataclass(frozen=True)
class KvOp:
    """One transaction op. verb: cas (index 0 = create), delete-cas, check-session, ..."""

    verb: str
    key: str
    value: bytes | None = None
    index: int | None = None
    session: str | None = None

    def to_txn(self) -> dict[str, Any]:
        kv: dict[str, Any] = {"Verb": self.verb, "Key": self.key}
        if self.value is not None:
            kv["Value"] = base64.b64encode(self.value).decode()
        if self.index is not None:
            kv["Index"] = self.index
        if self.session is not None:
            kv["Session"] = self.session
        return {"KV": kv}


@dataclass(frozen=True)
class TxnError:
    op_index: int  # position in the caller's op list (not in the chunk)
    what: str


@dataclass(frozen=True)
class TxnResult:
    ok: bool
    applied_ops: int  # ops of the caller's list that were applied (whole chunks only)
    errors: tuple[TxnError, ...] = ()
    # key -> ModifyIndex after the write, from Consul's Results (set/cas return the entry),
    # so a writer can CAS again without reading back
    indexes: Mapping[str, int] = field(default_factory=dict)

    @property
    def lost_leadership(self) -> bool:
        """The check-session guard failed: the writer is not (or no longer) the leader."""
        return any(e.op_index == -1 for e in self.errors)


def encode_job(spec: JobSpec, previous: StoredJob | None = None,
               rolled_back_from: str | None = None) -> bytes:
    """The spec in its input form (so reading it back validates it again), plus the version
    it replaced: one level of history, enough to roll a failing update back."""
    body: dict[str, Any] = {"version": spec.digest(), "spec": spec_to_data(spec)}
    if previous is not None and previous.version != body["version"]:
        body["previous"] = {"version": previous.version, "spec": dict(previous.spec)}
    if rolled_back_from:
        body["rolled_back_from"] = rolled_back_from
    return _encode(body, f"job {spec.name}")


class Unreadable(NamedTuple):
    """A record under walle/ that cannot be read: reported (scheduler log, `walle status`) and
    skipped, never deleted; fixing or deleting it is the operator's call."""

    key: str
    reason: str


class BadRecord(ConsulError):
    """One KV entry's key or value is not a record Walle can read."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


def decode_job(entry: Mapping[str, Any]) -> StoredJob:
    key = entry["Key"]
    name = parse_job_key(key)
    if name is None:
        raise BadRecord(key, "not a job key: expected walle/jobs/<name>")
    body = _decode(entry)
    _expect(key, body, "spec", Mapping, required=True)
    _expect(key, body, "previous", Mapping)
    _expect(key, body, "version", str)
    _expect(key, body, "rolled_back_from", str)
    return StoredJob(name=name, version=body.get("version", ""),
                     spec=body["spec"], modify_index=int(entry["ModifyIndex"]),
                     previous=body.get("previous"),
                     rolled_back_from=body.get("rolled_back_from"))


_ALLOC_FIELDS = ("node", "state", "version", "grant")


def _slot_entry(entry: Mapping[str, Any], parse: Callable[[str], tuple[str, int] | None],
                wrong_key: str, required: tuple[str, ...]
                ) -> tuple[str, tuple[str, int], dict[str, Any]]:
    """(key, (job, slot), body) of a per-slot KV entry whose `required` fields are strings;
    BadRecord for another key shape or a missing field."""
    key = entry["Key"]
    parsed = parse(key)
    if parsed is None:
        raise BadRecord(key, wrong_key)
    body = _decode(entry)
    for name in required:
        _expect(key, body, name, str, required=True)
    return key, parsed, body


def decode_commit(entry: Mapping[str, Any]) -> BatchCommit:
    _, parsed, body = _slot_entry(entry, parse_done_key, "not walle/done/<job>/<slot>",
                                  ("node", "attempt"))
    return BatchCommit(*parsed, body["node"], body["attempt"], int(entry["ModifyIndex"]))


def decode_alloc(entry: Mapping[str, Any]) -> Allocation:
    key, parsed, body = _slot_entry(
        entry, parse_alloc_key, "not a slot key: expected walle/allocs/<job>/<slot number>",
        ("node", "state"))
    _expect(key, body, "version", str)
    _expect(key, body, "grant", Mapping)
    return Allocation.from_json(*parsed, body, int(entry["ModifyIndex"]))


def _expect(key: str, body: Mapping[str, Any], name: str, kind: type,
            required: bool = False) -> None:
    if name not in body or (body[name] is None and not required):
        if required:
            raise BadRecord(key, f"field {name!r} is missing")
        return
    if not isinstance(body[name], kind):
        raise BadRecord(key, f"field {name!r} is a {type(body[name]).__name__}, "
                             f"not a {'object' if kind is Mapping else kind.__name__}")


def _decode_all(entries: Iterable[Mapping[str, Any]], decode: Callable[[Mapping[str, Any]], T],
                unreadable: list[Unreadable] | None) -> list[T]:
    """Decode each entry; one that cannot be read is skipped (and added to `unreadable`)."""
    out = []
    for entry in entries:
        try:
            out.append(decode(entry))
        except BadRecord as bad:
            if unreadable is not None:
                unreadable.append(Unreadable(bad.key, bad.reason))
    return out


def chunk_ops(ops: Sequence[KvOp], guard: KvOp | None, size: int = TXN_MAX_OPS
              ) -> list[tuple[int, list[KvOp]]]:
    """Split ops into chunks of at most `size` ops, each starting with `guard` when given.
    Returns (offset of the chunk's first caller op, chunk ops)."""
    room = size - (1 if guard else 0)
    if room < 1:
        raise ValueError(f"chunk size {size} leaves no room for ops")
    chunks = []
    for start in range(0, len(ops), room):
        body = list(ops[start:start + room])
        chunks.append((start, ([guard] if guard else []) + body))
    return chunks


TXN_IN_FLIGHT = 4  # transactions of one write sent at once
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _txn_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(TXN_IN_FLIGHT, thread_name_prefix="walle-txn")
        return _POOL


class StateStore:
    def __init__(self, api: ConsulApi):
        self.api = api
        self._kv = api.client.kv

    # --- desired state: jobs -------------------------------------------------------------
    def job(self, name: str) -> StoredJob | None:
        _, entry = self.api.call(f"read {job_key(name)}", lambda: self._kv.get(job_key(name)))
        return decode_job(entry) if entry else None

    def jobs(self, index: int = 0, wait: str | None = None,
             unreadable: list[Unreadable] | None = None) -> tuple[int, dict[str, StoredJob]]:
        """All stored jobs. Entries that cannot be read are skipped and, when given, added to
        `unreadable`: one bad record never hides the others."""
        idx, entries = self.api.call("read jobs", lambda: self._kv.get(
            JOBS_PREFIX, recurse=True, index=index or None, wait=wait))
        jobs = _decode_all(entries or [], decode_job, unreadable)
        return int(idx), {j.name: j for j in jobs}

    def put_job(self, spec: JobSpec, expected_index: int, *,
                previous: StoredJob | None = None, rolled_back_from: str | None = None) -> bool:
        """CAS write: expected_index 0 = the job must not exist yet, else its ModifyIndex.
        `previous` (the stored job this replaces) is kept for rollback."""
        value = encode_job(spec, previous, rolled_back_from)
        return bool(self.api.call(f"write {job_key(spec.name)}", lambda: self._kv.put(
            job_key(spec.name), value, cas=expected_index)))

    def delete_job(self, name: str, expected_index: int) -> bool:
        if expected_index < 1:
            raise ConsulError(f"delete_job({name!r}): expected_index must be the job's "
                              f"ModifyIndex (>= 1), got {expected_index}")
        return bool(self.api.call(f"delete {job_key(name)}", lambda: self._kv.delete(
            job_key(name), cas=expected_index)))

    # --- actual state: allocations (leader only) -----------------------------------------
    def allocs(self, job: str | None = None, index: int = 0, wait: str | None = None,
               unreadable: list[Unreadable] | None = None
               ) -> tuple[int, dict[tuple[str, int], Allocation]]:
        """Slot records (of one job or all). Unreadable entries are skipped, as in jobs()."""
        prefix = job_allocs_prefix(job) if job else ALLOCS_PREFIX
        idx, entries = self.api.call(f"read {prefix}", lambda: self._kv.get(
            prefix, recurse=True, index=index or None, wait=wait))
        allocs = _decode_all(entries or [], decode_alloc, unreadable)
        return int(idx), {(a.job, a.slot): a for a in allocs}

    def write_allocs(self, put: Iterable[Allocation] = (), delete: Iterable[Allocation] = (),
                     *, session: str, consumed: Iterable[BatchCommit] = ()) -> TxnResult:
        """Leader write: CAS every alloc (modify_index 0 = new) and prove the lock is held.
        `consumed` batch commits are deleted in the same transaction (CAS: a newer commit
        written meanwhile stays)."""
        ops = [KvOp("cas", a.key, _encode(a.to_json(), a.key), index=a.modify_index)
               for a in put]
        ops += [KvOp("delete-cas", a.key, index=a.modify_index) for a in delete]
        ops += [KvOp("delete-cas", c.key, index=c.modify_index) for c in consumed]
        return self.txn(ops, session=session)

    def batch_commits(self, unreadable: list[Unreadable] | None = None
                      ) -> dict[tuple[str, int], BatchCommit]:
        """Every node's record of a finished batch run (walle-batch-commit writes them)."""
        _, entries = self.api.call("read batch commits", lambda: self._kv.get(
            DONE_PREFIX, recurse=True))
        commits = _decode_all(entries or [], decode_commit, unreadable)
        return {(c.job, c.slot): c for c in commits}

    def txn(self, ops: Sequence[KvOp], *, session: str | None = None) -> TxnResult:
        """Apply ops in chunks; with `session`, each chunk first checks it holds LEADER_KEY.
        Chunks go TXN_IN_FLIGHT at a time (a wave): each is its own guarded transaction
        with its own CAS, so their order does not matter, and in flight together they share
        the servers' commits (Raft batches concurrent applies, as the stand-in's group commit
        does). A failed chunk stops the write after its wave: the chunks of that wave may
        have applied or not, each as a whole (`applied_ops` counts those that did)."""
        if session is not None and not session:
            raise NotLeader("txn: session is empty: only the current leader may write")
        guard = KvOp("check-session", LEADER_KEY, session=session) if session else None
        applied, indexes = 0, {}
        chunks = chunk_ops(ops, guard)
        for wave in range(0, len(chunks), TXN_IN_FLIGHT):
            sent = chunks[wave:wave + TXN_IN_FLIGHT]
            answers = (_txn_pool().map(self._send_chunk, sent) if len(sent) > 1
                       else [self._send_chunk(sent[0])])
            failed, error = None, None
            for (offset, chunk), answer in zip(sent, answers, strict=True):
                if isinstance(answer, Exception):
                    error = error or answer
                    continue
                status, body = answer
                if status == 200:
                    applied += len(chunk) - (1 if guard else 0)
                    for result in (body or {}).get("Results") or []:
                        kv = result.get("KV") or {}
                        if kv.get("Key") and kv.get("ModifyIndex"):
                            indexes[kv["Key"]] = int(kv["ModifyIndex"])
                elif status == 409:
                    failed = failed or TxnResult(False, 0, _txn_errors(body, offset,
                                                                       bool(guard)))
                else:
                    error = error or ConsulError(
                        f"txn at {self.api.address} answered {status}: {body}")
            if error is not None:
                raise error
            if failed is not None:
                return replace(failed, applied_ops=applied, indexes=indexes)
        return TxnResult(True, applied, indexes=indexes)

    def _send_chunk(self, sent: tuple[int, list[KvOp]]) -> tuple[int, Any] | Exception:
        try:
            return self.api.raw("put", "/v1/txn",
                                data=json.dumps([op.to_txn() for op in sent[1]]),
                                what=f"txn of {len(sent[1])} ops")
        except Exception as err:  # noqa: BLE001 - raised by txn once its wave is in
            return err

    # --- per-job history (service/events.py owns the body; leader writes only) --------------
    def events(self, job: str | None = None, index: int = 0, wait: str | None = None
               ) -> tuple[int, dict[str, tuple[dict[str, Any], int]]]:
        """walle/events/<job> values (one job's or all): job -> (body, ModifyIndex), blocking
        when index > 0. A value that is not a JSON object reads as {} (a history is not worth
        stopping for: the leader's next write replaces it)."""
        key = events_key(job) if job else EVENTS_PREFIX
        idx, entries = self.api.call(f"read {key}", lambda: self._kv.get(
            key, recurse=job is None, index=index or None, wait=wait))
        if job is not None:
            entries = [entries] if entries else []
        out = {}
        for e in entries or []:
            name = parse_events_key(e["Key"])
            if name:
                try:
                    body = _decode(e)
                except BadRecord:
                    body = {}
                out[name] = (body, int(e["ModifyIndex"]))
        return int(idx), out

    def cron_runs(self, job: str) -> dict[int, Any]:
        """walle/runs/<job>/<slot> as their nodes wrote them (walle-cron-record): slot -> the
        decoded JSON, None where it is not JSON. Untrusted: walle.service.cron_runs reads it."""
        prefix = job_runs_prefix(job)
        _, entries = self.api.call(f"read {prefix}",
                                   lambda: self._kv.get(prefix, recurse=True))
        out: dict[int, Any] = {}
        for e in entries or []:
            parsed = parse_runs_key(e["Key"])
            if parsed and parsed[0] == job:
                try:
                    out[parsed[1]] = json.loads(e.get("Value") or b"null")
                except (ValueError, RecursionError):
                    out[parsed[1]] = None
        return out

    def put_events(self, job: str, body: Mapping[str, Any], expected_index: int, *,
                   session: str) -> TxnResult:
        """Leader write of one job's history: CAS, with the leader guard."""
        return self.put_many_events([(job, body, expected_index)], session=session)

    def put_many_events(self, items: Sequence[tuple[str, Mapping[str, Any], int]], *,
                        session: str) -> TxnResult:
        """Leader write of several jobs' histories (job, body, expected index): CAS each,
        in as few transactions as the op limit allows."""
        return self.txn([KvOp("cas", events_key(job), _encode(body, events_key(job)),
                              index=index) for job, body, index in items], session=session)

    # --- operator marks on nodes: drain ----------------------------------------------------
    def drains(self, index: int = 0, wait: str | None = None) -> tuple[int, frozenset[str]]:
        """Nodes marked for draining (`walle/nodes/<node>/drain`), blocking when index > 0."""
        idx, keys = self.api.call("read drain keys", lambda: self._kv.get(
            NODES_PREFIX, keys=True, index=index or None, wait=wait))
        names = {node for node in map(parse_drain_key, keys or []) if node is not None}
        return int(idx), frozenset(names)

    def set_drain(self, node: str, drain: bool = True) -> None:
        key = drain_key(node)
        if drain:
            self.api.call(f"write {key}", lambda: self._kv.put(key, "drain"))
        else:
            self.api.call(f"delete {key}", lambda: self._kv.delete(key))

    # --- installed catalog packages (walle package) -----------------------------------------
    def packages(self) -> dict[str, tuple[dict[str, Any], int]]:
        """walle/packages/<name> records: name -> (body, ModifyIndex). A value that is not a
        JSON object raises BadRecord: the catalog must not act on a record it cannot read."""
        _, entries = self.api.call("read packages",
                                   lambda: self._kv.get(PACKAGES_PREFIX, recurse=True))
        return {name: (_decode(e), int(e["ModifyIndex"])) for e in entries or []
                if (name := parse_package_key(e["Key"])) is not None}

    def put_package(self, name: str, body: Mapping[str, Any], expected_index: int) -> bool:
        """CAS write of one record: expected_index 0 = it must not exist yet."""
        key, value = package_key(name), _encode(body, f"package {name}")
        return bool(self.api.call(f"write {key}", lambda: self._kv.put(
            key, value, cas=expected_index)))

    def delete_package(self, name: str, expected_index: int) -> bool:
        key = package_key(name)
        return bool(self.api.call(f"delete {key}", lambda: self._kv.delete(
            key, cas=expected_index)))

    # --- the leader's placement defaults (walle plan decides with them) --------------------
    def placement_config(self) -> dict[str, Any] | None:
        """What the leader published (None: no leader has yet). BadRecord if unreadable."""
        return self.leader_note(PLACEMENT_CONFIG)

    def put_placement_config(self, body: Mapping[str, Any], *, session: str) -> TxnResult:
        """Leader write, guarded by the lock like the slot records."""
        return self.put_leader_note(PLACEMENT_CONFIG, body, session=session)

    def leader_note(self, key: str) -> dict[str, Any] | None:
        """A JSON value the leader publishes for `walle plan` (walle/config/...); None when
        absent, BadRecord when unreadable."""
        _, entry = self.api.call(f"read {key}", lambda: self._kv.get(key))
        return _decode(entry) if entry else None

    def put_leader_note(self, key: str, body: Mapping[str, Any], *, session: str) -> TxnResult:
        """Leader write of such a value, guarded by the lock like the slot records."""
        return self.txn([KvOp("set", key, _encode(body, key))], session=session)

    # --- watches -------------------------------------------------------------------------
    def watch_jobs(self, **kw: Any) -> Watch[dict[str, StoredJob]]:
        return Watch(lambda index, wait: self.jobs(index, wait), **kw)

    def watch_allocs(self, **kw: Any) -> Watch[dict[tuple[str, int], Allocation]]:
        return Watch(lambda index, wait: self.allocs(None, index, wait), **kw)

    def watch_drains(self, **kw: Any) -> Watch[frozenset[str]]:
        return Watch(lambda index, wait: self.drains(index, wait), **kw)


def _txn_errors(body: Any, offset: int, guarded: bool) -> tuple[TxnError, ...]:
    """Map Consul's chunk-relative OpIndex back to the caller's list; the guard is -1."""
    errors = body.get("Errors") or [] if isinstance(body, dict) else []
    out = []
    for e in errors:
        op = int(e.get("OpIndex", 0))
        op = (-1 if op == 0 else offset + op - 1) if guarded else offset + op
        out.append(TxnError(op, e.get("What", "")))
    return tuple(out) or (TxnError(offset, f"rolled back: {body}"),)


def _encode(body: Mapping[str, Any], what: str) -> bytes:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"), default=list).encode()
    if len(raw) > VALUE_LIMIT:
        raise ConsulError(f"{what}: {len(raw)} bytes is over Consul's {VALUE_LIMIT} byte value "
                          f"limit")
    return raw


def _decode(entry: Mapping[str, Any]) -> dict[str, Any]:
    raw = entry.get("Value") or b"{}"
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise BadRecord(entry.get("Key", "?"), f"value is not JSON ({err})") from err
    if not isinstance(body, dict):
        raise BadRecord(entry.get("Key", "?"),
                        f"value is a JSON {type(body).__name__}, not an object")
    return body

