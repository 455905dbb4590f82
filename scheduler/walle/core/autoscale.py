"""The autoscaling policy: a service's next count from one measurement (pure; no I/O, no clock:
`now` and the time of the last change are passed in).

Proportional, like Kubernetes' HorizontalPodAutoscaler: with `value` the measured figure per
instance and `target` what the job asks for, desired = ceil(count * value / target), then
clamped to scaling.min..max. Around it:
- a tolerance: while value/target is within 1 +- TOLERANCE nothing moves (no flapping on noise);
- a cooldown: the count rises at once, but falls only once `cooldown` seconds have passed
  since the last change (a new instance starts with no load; the count must not drop back
  because of it, nor follow every dip);
- a job at 0 instances has nothing to measure per instance: it rises to ceil(value / target)
  when the metric (a Prometheus query) says there is work, else it stays;
- a count outside min..max (the bounds were just changed) is brought inside at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from walle.jobspec.model import Scaling

TOLERANCE = 0.1


@dataclass(frozen=True)
class ScaleDecision:
    count: int  # the count to have; the current one means: keep
    why: str  # what decided it, worded for the job's events
    wait_until: float | None = None  # a fall held back by the cooldown: decide again then


def decide_count(scaling: Scaling, current: int, value: float, last_change: float | None,
                 now: float, tolerance: float = TOLERANCE) -> ScaleDecision:
    """The count the job should have after measuring `value` (per instance, in the metric's
    unit) at `now`; `last_change` is when its count last changed (None: never)."""
    inside = min(scaling.max, max(scaling.min, current))
    if inside != current:
        return ScaleDecision(inside, f"count {current} is outside {scaling.min}..{scaling.max}")
    ratio = value / scaling.target
    if current == 0:
        wanted = math.ceil(ratio - 1e-9) if value > 0 else 0
    elif abs(ratio - 1.0) <= tolerance:
        return ScaleDecision(current, f"within {tolerance:.0%} of the target")
    else:
        # a hair below the next integer is that integer: 3 * 0.7/0.35 must give 6, not 7
        wanted = math.ceil(current * ratio - 1e-9)
    wanted = min(scaling.max, max(scaling.min, wanted))
    if wanted > current:
        return ScaleDecision(wanted, f"{_show(value)} per instance is above the target "
                                     f"{_show(scaling.target)}")
    if wanted == current:
        return ScaleDecision(current, "at the bounds" if wanted in (scaling.min, scaling.max)
                             else "no change needed")
    ready_at = (last_change if last_change is not None else float("-inf")) + scaling.cooldown
    if now < ready_at:
        return ScaleDecision(current, f"cooling down for {ready_at - now:.0f}s more",
                             wait_until=ready_at)
    return ScaleDecision(wanted, f"{_show(value)} per instance is below the target "
                                 f"{_show(scaling.target)}")


def _show(value: float) -> str:
    return f"{value:.4g}"
