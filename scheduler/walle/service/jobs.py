"""The job API: every change to a job's desired state goes through here (submit, scale, stop,
roll back), below the CLI. Used by `walle run/scale/stop`, the web console, the package
catalog, the demo, the benches and the leader's automatic rollback. Every write is a CAS on
the job key's ModifyIndex, retried a few times against concurrent writers, and keeps the
version it replaces (one level of history: what a rollback puts back)."""

from __future__ import annotations

import time

from walle.adapters.consul import ConsulApi, StateStore, StoredJob
from walle.adapters.consul.tombstones import clear_tombstone, mark_stopped, stop_job
from walle.jobspec import JobSpec, SpecError, parse_spec
from walle.jobspec.grammar import MAX_COUNT
from walle.service.adopt import unclaimed_instances
from walle.service.cluster import load_snapshot

CAS_ATTEMPTS = 5


class ActionError(Exception):
    """An action on the cluster (scale, stop, drain, install...) that was not done; the
    message says why."""


class BadCount(ActionError):
    """A count outside 0..MAX_COUNT."""


def submit(store: StateStore, spec: JobSpec) -> str | None:
    """CAS-write a job, keeping the version it replaces for rollback: "submitted", "updated"
    or "unchanged"; None when it kept changing under us (CAS_ATTEMPTS lost races)."""
    for _ in range(CAS_ATTEMPTS):
        current = store.job(spec.name)
        if current and current.version == spec.digest():
            return "unchanged"
        if store.put_job(spec, current.modify_index if current else 0, previous=current):
            if current is None:  # submitted again after `walle stop`: not stopped any more
                clear_tombstone(store.api, spec.name)
            return "updated" if current else "submitted"
    return None


def scale(store: StateStore, job: str, count: int) -> None:
    """CAS-write the job with a new count (the spec is validated again, as `walle run`
    would); ActionError when there is no such job or it kept changing, BadCount for a count
    out of range."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
        raise BadCount(f"count must be a whole number 0..{MAX_COUNT}, got {count!r}")
    for _ in range(CAS_ATTEMPTS):
        current = store.job(job)
        if current is None:
            raise ActionError(f"no job {job!r}")
        data = dict(current.spec)
        data["count"] = count
        try:
            spec = parse_spec(data, source=f"{job} scaled")
        except SpecError as err:  # e.g. a count outside the job's scaling bounds
            raise BadCount(str(err)) from None
        if store.put_job(spec, current.modify_index, previous=current):
            return
    raise ActionError(f"{job} kept changing; try again")


def stop(api: ConsulApi, store: StateStore, job: str) -> list:
    """Delete the job and leave its tombstone (walle/stopped/<job>): the leader stops its
    instances, even those it finds running with no record. A job absent from KV whose
    instances still run (state lost) gets the tombstone alone: returns those unclaimed
    instances (empty for a job stopped the usual way)."""
    current = store.job(job)
    if current is None:
        unclaimed = [f for f in unclaimed_instances(load_snapshot(api, store)) if f.job == job]
        if not unclaimed:
            raise ActionError(f"no job {job!r}")
        mark_stopped(api, job, stopped_at=time.time())
        return unclaimed
    if not stop_job(store, job, current.modify_index, version=current.version,
                    stopped_at=time.time()):
        raise ActionError(f"{job} changed meanwhile; try again")
    return []


def roll_back(store: StateStore, stored: StoredJob, previous: JobSpec,
              failing: JobSpec) -> bool:
    """Put `previous` (the version `stored` kept) back in place of `failing`: one CAS
    against the version read (False: it changed meanwhile; the next step decides again)."""
    return bool(store.put_job(previous, stored.modify_index, rolled_back_from=failing.digest()))
