"""bench/scale.py at a small size, so that it cannot rot: the real leader loop against the
stand-in in its own process brings every slot to running, and re-plans a dead node's
instances. Figures are the bench's business; this only checks that it works."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from walle.adapters.runner import REPO_ROOT

pytestmark = pytest.mark.consul


def _bench():
    path = REPO_ROOT / "bench" / "scale.py"
    sys.path.insert(0, str(path.parent))  # it imports its sibling benches
    try:
        spec = importlib.util.spec_from_file_location("walle_bench_scale", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


def test_every_slot_runs_and_a_dead_nodes_instances_are_placed_again():
    bench = _bench()
    run = bench.run_size(300, 20, node_death=True, data_dir=True, timeout=300, profile=None)
    figures = run.figures
    assert "timed_out_after_s" not in figures, figures
    assert figures["placements_per_s"] > 0 and figures["steps"] >= 2
    assert figures["death_lost_instances"] > 0
    assert figures["death_detect_to_planned_s"] is not None, figures
    assert figures["death_detect_to_running_s"] is not None, figures
