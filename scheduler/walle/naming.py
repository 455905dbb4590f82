"""Every name Walle builds and reads back: the systemd units and Consul objects of one
workload instance, and the Consul KV keys of the cluster's state. Pure; every room imports it.

Slices encode their place in the tree with dashes (`walle-web.slice` sits in `walle.slice`),
so dashes inside a job name are mapped to underscores. Job names never contain underscores
(the spec forbids them), which keeps the mapping one-to-one.
"""

from __future__ import annotations

ROOT_SLICE = "walle.slice"


def unit_stem(job: str, slot: int) -> str:
    return f"walle-{job.replace('-', '_')}-{slot}"


def job_slice(job: str) -> str:
    return f"walle-{job.replace('-', '_')}.slice"


def instance_slice(job: str, slot: int) -> str:
    """walle-<job>-<slot>.slice: a child of the job's slice, which is a child of walle.slice."""
    return f"{unit_stem(job, slot)}.slice"


def service_unit(job: str, slot: int) -> str:
    return f"{unit_stem(job, slot)}.service"


def timer_unit(job: str, slot: int) -> str:
    return f"{unit_stem(job, slot)}.timer"


def parse_unit(unit: str) -> tuple[str, int] | None:
    """"walle-my_web-3.service" (or .timer) -> ("my-web", 3): the inverse of service_unit and
    timer_unit; also a run of a `concurrency: allow` cron slot, "walle-my_web-3@<run>.service"
    (an instance of the slot's template, walle_units.run_template), is the slot's. None for any
    other unit (slices, other units)."""
    stem, dot, suffix = unit.rpartition(".")
    if not dot or suffix not in ("service", "timer") or not stem.startswith("walle-"):
        return None
    if "@" in stem:
        stem, _, run = stem.partition("@")
        if suffix != "service" or not run or "@" in run:
            return None
    job, _, slot = stem[len("walle-"):].rpartition("-")
    if not job or not slot.isdigit():
        return None
    return job.replace("_", "-"), int(slot)


def instance_id(job: str, slot: int) -> str:
    """Consul service ID of one instance: unique per agent and stable across moves."""
    return f"{job}-{slot}"


def parse_instance_id(sid: str) -> tuple[str, int] | None:
    """"web-3" -> ("web", 3); None for IDs that are not Walle instance IDs."""
    job, _, slot = sid.rpartition("-")
    if not job or not slot.isdigit():
        return None
    return job, int(slot)


# ----------------------------------------------------------------------- Consul KV keys
KV_PREFIX = "walle/"
JOBS_PREFIX = KV_PREFIX + "jobs/"  # walle/jobs/<job>: the desired spec
ALLOCS_PREFIX = KV_PREFIX + "allocs/"  # walle/allocs/<job>/<slot>: slot records
NODES_PREFIX = KV_PREFIX + "nodes/"  # walle/nodes/<node>/drain
STOPPED_PREFIX = KV_PREFIX + "stopped/"  # walle/stopped/<job>: the tombstone of walle stop
PACKAGES_PREFIX = KV_PREFIX + "packages/"  # walle/packages/<name>: installed packages
SECRETS_PREFIX = KV_PREFIX + "secrets/"  # walle/secrets/<path>: secret values
DONE_PREFIX = KV_PREFIX + "done/"  # walle/done/<job>/<slot>: a node's batch commit
RUNS_PREFIX = KV_PREFIX + "runs/"  # walle/runs/<job>/<slot>: a cron slot's last runs
EVENTS_PREFIX = KV_PREFIX + "events/"  # walle/events/<job>: the job's bounded event history
LEADER_KEY = KV_PREFIX + "leader"  # the scheduler's lock
PLACEMENT_CONFIG_KEY = KV_PREFIX + "config/placement"  # the leader's defaults (decide.py)
PRESENCE_KEY = KV_PREFIX + "config/presence"  # since when the leader sees nodes down/missing
PRESSURE_KEY = KV_PREFIX + "config/pressure"  # nodes' usage samples, shed moves made
IN_FLIGHT_KEY = KV_PREFIX + "config/in-flight"  # slots the leader's batches act on now
DRAIN_SUFFIX = "/drain"


def job_key(job: str) -> str:
    return JOBS_PREFIX + job


def parse_job_key(key: str) -> str | None:
    """walle/jobs/<job> -> job; None for any other shape."""
    return _single_part(key, JOBS_PREFIX)


def job_allocs_prefix(job: str) -> str:
    """walle/allocs/<job>/: the prefix of one job's slot records."""
    return f"{ALLOCS_PREFIX}{job}/"


def alloc_key(job: str, slot: int) -> str:
    return f"{job_allocs_prefix(job)}{slot}"


def parse_alloc_key(key: str) -> tuple[str, int] | None:
    """walle/allocs/<job>/<slot> -> (job, slot); None for any other shape."""
    return _job_and_slot(key, ALLOCS_PREFIX)


def done_key(job: str, slot: int) -> str:
    """Where a node records that the batch instance `job`-`slot` finished successfully
    (walle-batch-commit)."""
    return f"{DONE_PREFIX}{job}/{slot}"


def parse_done_key(key: str) -> tuple[str, int] | None:
    """walle/done/<job>/<slot> -> (job, slot); None for any other shape."""
    return _job_and_slot(key, DONE_PREFIX)


def runs_key(job: str, slot: int) -> str:
    """Where the node running cron instance `job`-`slot` appends each run (walle-cron-record):
    a bounded JSON list, read by `walle status`."""
    return f"{RUNS_PREFIX}{job}/{slot}"


def job_runs_prefix(job: str) -> str:
    return f"{RUNS_PREFIX}{job}/"


def parse_runs_key(key: str) -> tuple[str, int] | None:
    """walle/runs/<job>/<slot> -> (job, slot); None for any other shape."""
    return _job_and_slot(key, RUNS_PREFIX)


def drain_key(node: str) -> str:
    return f"{NODES_PREFIX}{node}{DRAIN_SUFFIX}"


def parse_drain_key(key: str) -> str | None:
    """walle/nodes/<node>/drain -> node; None for any other shape."""
    if not key.endswith(DRAIN_SUFFIX):
        return None
    return _single_part(key[:-len(DRAIN_SUFFIX)], NODES_PREFIX)


def events_key(job: str) -> str:
    return EVENTS_PREFIX + job


def parse_events_key(key: str) -> str | None:
    """walle/events/<job> -> job; None for any other shape."""
    return _single_part(key, EVENTS_PREFIX)


def tombstone_key(job: str) -> str:
    return STOPPED_PREFIX + job


def parse_tombstone_key(key: str) -> str | None:
    """walle/stopped/<job> -> job; None for any other shape."""
    return _single_part(key, STOPPED_PREFIX)


def package_key(name: str) -> str:
    return PACKAGES_PREFIX + name


def parse_package_key(key: str) -> str | None:
    """walle/packages/<name> -> name; None for any other shape."""
    return _single_part(key, PACKAGES_PREFIX)


def secret_key(path: str) -> str:
    return SECRETS_PREFIX + path


def _job_and_slot(key: str, prefix: str) -> tuple[str, int] | None:
    """<prefix><job>/<slot> -> (job, slot); None for any other shape."""
    if not key.startswith(prefix):
        return None
    job, _, slot = key[len(prefix):].rpartition("/")
    if not job or "/" in job or not slot.isdigit() or not slot.isascii():
        return None
    return job, int(slot)


def _single_part(key: str, prefix: str) -> str | None:
    rest = key[len(prefix):] if key.startswith(prefix) else ""
    return rest if rest and "/" not in rest else None
