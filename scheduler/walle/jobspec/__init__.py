"""Job specs: the validated, immutable description of what an operator wants run."""

from walle.jobspec.encoding import load_spec_file, load_spec_text, spec_to_data
from walle.jobspec.model import (
    Balancer,
    Constraint,
    Discovery,
    HealthCheck,
    JobSpec,
    Port,
    Range,
    Resources,
    Runtime,
    Secret,
    StopPolicy,
    UpdatePolicy,
)
from walle.jobspec.parse import parse_spec
from walle.jobspec.readers import Problem, SpecError

__all__ = [
    "Balancer",
    "Constraint",
    "Discovery",
    "HealthCheck",
    "JobSpec",
    "Port",
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
