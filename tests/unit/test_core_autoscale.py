"""The autoscaling policy (core/autoscale.py): proportional within bounds, a tolerance, a
cooldown before the count falls, and deterministic."""

from __future__ import annotations

import pytest

from walle.core.autoscale import decide_count
from walle.jobspec.model import Scaling

CPU = Scaling(min=1, max=10, metric="cpu", target=50.0, cooldown=60.0)


@pytest.mark.parametrize(("current", "value", "count"), [
    (2, 100.0, 4),   # twice the target: twice the instances
    (3, 70.0, 5),    # ceil(3 * 1.4) = 5
    (3, 35.0, 3),    # ceil(3 * 0.7) = 3: nothing to take away
    (4, 54.0, 4),    # within 10%: no change
    (4, 46.0, 4),
    (2, 1000.0, 10),  # clamped to max
    (8, 500.0, 10),
])
def test_the_count_rises_in_proportion_and_at_once(current, value, count):
    assert decide_count(CPU, current, value, last_change=100.0, now=101.0).count == count


def test_the_count_falls_only_after_the_cooldown_and_never_below_min():
    held = decide_count(CPU, 6, 10.0, last_change=100.0, now=130.0)
    assert held.count == 6 and held.wait_until == 160.0 and "cooling down" in held.why
    fell = decide_count(CPU, 6, 10.0, last_change=100.0, now=160.0)
    assert fell.count == 2 and "below the target" in fell.why  # ceil(6 * 0.2) = 2
    assert decide_count(CPU, 6, 0.0, last_change=None, now=0.0).count == 1  # min


def test_exact_proportions_do_not_round_up_a_hair():
    prom = Scaling(min=0, max=20, metric="prometheus", target=0.35, query="q")
    assert decide_count(prom, 3, 0.7, last_change=None, now=0.0).count == 6


def test_a_count_outside_changed_bounds_is_brought_inside():
    assert decide_count(CPU, 12, 50.0, last_change=None, now=0.0).count == 10
    assert decide_count(CPU, 0, 0.0, last_change=None, now=0.0).count == 1


def test_from_zero_only_a_positive_measure_starts_instances():
    prom = Scaling(min=0, max=5, metric="prometheus", target=10.0, query="q")
    assert decide_count(prom, 0, 0.0, last_change=None, now=0.0).count == 0
    assert decide_count(prom, 0, 25.0, last_change=None, now=0.0).count == 3


def test_the_same_inputs_give_the_same_decision():
    decisions = {decide_count(CPU, 3, 80.0, last_change=5.0, now=9.0) for _ in range(50)}
    assert len(decisions) == 1
