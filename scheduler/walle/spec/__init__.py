"""Job specs: the validated, immutable description of what an operator wants run."""

from walle.spec.model import (
    Constraint,
    Discovery,
    HealthCheck,
    JobSpec,
    Range,
    Resources,
    Runtime,
    StopPolicy,
    UpdatePolicy,
)

__all__ = [
    "Constraint",
    "Discovery",
    "HealthCheck",
    "JobSpec",
    "Range",
    "Resources",
    "Runtime",
    "StopPolicy",
    "UpdatePolicy",
]
