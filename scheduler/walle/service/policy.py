"""The cluster's privilege policy: which jobs may leave the workload sandbox.

A job asks (`runtime.privileged`, `runtime.capabilities`, `runtime.user: root`); the cluster
allows (the scheduler's `--allow-privileged` and `--allow-capability`, default: nothing). The
leader checks every placement against it (service/executor.py) and refuses the instance with
the reason below; `walle validate` accepts such specs because only the cluster can decide.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from walle.jobspec import JobSpec


@dataclass(frozen=True)
class PrivilegePolicy:
    allow_privileged: bool = False  # root without the sandbox
    allowed_capabilities: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, allow_privileged: bool = False,
           capabilities: Iterable[str] = ()) -> PrivilegePolicy:
        return cls(allow_privileged, frozenset(c.upper() for c in capabilities))

    def refusal(self, spec: JobSpec) -> str | None:
        """Why this cluster will not run the job as asked, or None when it may."""
        rt = spec.runtime
        if rt.privileged and not self.allow_privileged:
            return (f"job {spec.name}: runtime.privileged is not allowed by the cluster policy "
                    "(the scheduler runs without --allow-privileged); remove it to run in the "
                    "sandbox")
        denied = sorted(set(rt.capabilities) - self.allowed_capabilities)
        if denied:
            return (f"job {spec.name}: runtime.capabilities {', '.join(denied)} not allowed by "
                    "the cluster policy (the scheduler allows "
                    f"{', '.join(sorted(self.allowed_capabilities)) or 'none'}: "
                    "--allow-capability)")
        return None


def policy_notes(spec: JobSpec) -> list[dict[str, str]]:
    """What in a valid spec only the cluster policy can grant ({path, message} each), for
    `walle validate` to say so: the spec is fine, whether it runs is the cluster's call."""
    notes = []
    if spec.runtime.privileged:
        notes.append({"path": "runtime.privileged", "message": "runs only where the cluster "
                      "policy allows privileged jobs (walle scheduler run --allow-privileged)"})
    for cap in spec.runtime.capabilities:
        notes.append({"path": "runtime.capabilities", "message": f"{cap} is kept only where "
                      f"the cluster policy allows it (--allow-capability {cap})"})
    return notes
