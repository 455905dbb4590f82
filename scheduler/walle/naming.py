"""Names of the systemd units and Consul objects of one workload instance.

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
    timer_unit; None for any other unit (slices, other units)."""
    stem, dot, suffix = unit.rpartition(".")
    if not dot or suffix not in ("service", "timer") or not stem.startswith("walle-"):
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
