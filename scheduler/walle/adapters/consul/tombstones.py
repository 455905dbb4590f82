"""Tombstones: `walle/stopped/<job>` says "an operator stopped this job on purpose".

They let the leader tell a deliberate `walle stop` from lost state. An instance of a job that
is absent from `walle/jobs/` is stopped only when its job has a tombstone; without one (KV
wiped, or restored from a backup older than the job) it keeps running, unclaimed, until the
job is submitted again (then it is adopted) or an operator stops it. A tombstone is removed
when the job is submitted again. See docs/operations.md "Disaster recovery".
"""

from __future__ import annotations

import json

from walle.adapters.consul.api import ConsulApi
from walle.adapters.consul.state import KvOp, StateStore
from walle.naming import STOPPED_PREFIX, job_key, parse_tombstone_key, tombstone_key


def _value(stopped_at: float, version: str) -> bytes:
    return json.dumps({"stopped_at": stopped_at, "version": version}).encode()


def stop_job(store: StateStore, name: str, expected_index: int, *, version: str,
             stopped_at: float) -> bool:
    """Delete the job (CAS on its ModifyIndex) and leave its tombstone, in one transaction:
    the leader never sees the job gone without knowing it was stopped on purpose."""
    ops = [KvOp("delete-cas", job_key(name), index=expected_index),
           KvOp("set", tombstone_key(name), _value(stopped_at, version))]
    return store.txn(ops).ok


def mark_stopped(api: ConsulApi, name: str, *, stopped_at: float) -> None:
    """A tombstone for a job that is not in KV (its instances run unclaimed)."""
    kv = api.client.kv
    api.call(f"write {tombstone_key(name)}",
             lambda: kv.put(tombstone_key(name), _value(stopped_at, "")))


def clear_tombstone(api: ConsulApi, name: str) -> None:
    kv = api.client.kv
    api.call(f"delete {tombstone_key(name)}", lambda: kv.delete(tombstone_key(name)))


def stopped_jobs(api: ConsulApi) -> frozenset[str]:
    """Names of the jobs with a tombstone."""
    kv = api.client.kv
    _, keys = api.call(f"read {STOPPED_PREFIX}", lambda: kv.get(STOPPED_PREFIX, keys=True))
    return frozenset(job for job in map(parse_tombstone_key, keys or ()) if job is not None)
