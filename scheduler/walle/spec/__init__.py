"""Job specs: the validated, immutable description of what an operator wants run."""

from walle.spec.model import (
    Balancer,
    Constraint,
    Discovery,
    HealthCheck,
    JobSpec,
    Range,
    Resources,
    Runtime,
    Secret,
    StopPolicy,
    UpdatePolicy,
)
from walle.spec.parse import (
    Problem,
    SpecError,
    load_spec_file,
    load_spec_text,
    parse_spec,
    spec_to_data,
)

__all__ = [
    "Balancer",
    "Constraint",
    "Discovery",
    "HealthCheck",
    "JobSpec",
    "Problem",
    "Range",
    "Resources",
    "Runtime",
    "Secret",
    "SpecError",
    "StopPolicy",
    "UpdatePolicy",
    "load_spec_file",
    "load_spec_text",
    "parse_spec",
    "spec_to_data",
]
