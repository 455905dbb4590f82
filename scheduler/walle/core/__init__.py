"""Pure placement core: cluster state and jobs in, a plan out. No I/O, no clock, no global
randomness. See docs/core.md."""

from walle.core.explain import (
    Explanation,
    NodeVerdict,
    explain,
    format_explanation,
    format_nodes,
)
from walle.core.grants import compute_grants
from walle.core.model import Allocation, Capacity, Grant, Node
from walle.core.placement import PlacementConfig
from walle.core.plan import (
    Evict,
    Failure,
    Migrate,
    Place,
    Plan,
    Regrant,
    Replace,
    Stop,
    UpdateInPlace,
    apply_plan,
)
from walle.core.reconcile import reconcile
from walle.core.scoring import Weights

__all__ = [
    "Allocation", "Capacity", "Evict", "Explanation", "Failure", "Grant", "Migrate", "Node",
    "NodeVerdict", "Place", "PlacementConfig", "Plan", "Regrant", "Replace", "Stop",
    "UpdateInPlace", "Weights", "apply_plan", "compute_grants", "explain",
    "format_explanation", "format_nodes", "reconcile",
]
