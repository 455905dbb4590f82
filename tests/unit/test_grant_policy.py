"""One grant policy: an instance the core gave no grant (a record placed again, a regrant of
an adopted instance) gets the core's own grant for an instance alone on a node, never a
second computation that disagrees with it (issue 10 item 5)."""

from __future__ import annotations

import math

import pytest

from walle.adapters.runner import HostResult, RunResult
from walle.core import Allocation
from walle.core.grants import grants_for
from walle.core.model import Capacity
from walle.jobspec.parse import parse_spec
from walle.service.executor import Executor


class RecordingRunner:
    def __init__(self):
        self.extravars = []

    def __call__(self, playbook, inventory, extravars, limit, timeout=None):
        self.extravars.append(extravars)
        return RunResult("successful", 0, {h: HostResult(h, ok=True, done=True) for h in limit},
                         0.1)


def _spec(cpu, memory):
    return parse_spec({"name": "web", "kind": "service", "count": 1,
                       "resources": {"cpu": cpu, "memory": memory},
                       "runtime": {"command": "/usr/bin/python3"}})


def _placed_slice(spec, call):
    runner = RecordingRunner()
    executor = Executor({}, "http://127.0.0.1:8500", runner=runner, register=False)
    alloc = Allocation(job="web", slot=0, node="node1", reserved=Capacity(),
                       ceiling=Capacity(), spec_digest=spec.digest(),
                       runtime_digest=spec.runtime_digest())  # no grant from the core
    outcome = (executor.place([(alloc, spec)], {"node1": "10.77.1.11"}) if call == "place"
               else executor.regrant([(alloc, spec)]))
    assert outcome["web-0"].ok
    return runner.extravars[0]["walle_batch"]["node1"][0]["slice"]


@pytest.mark.parametrize("call", ["place", "regrant"])
@pytest.mark.parametrize(("cpu", "memory"), [
    ("0.1-0.333", "120M-128M"),  # the review's case: MemoryHigh fell below MemoryMin
    ("1-2", "64M-1G"),
    ("0.5", "256M"),
])
def test_an_ungranted_instance_gets_the_cores_grant(call, cpu, memory):
    spec = _spec(cpu, memory)
    res = spec.resources
    core = grants_for(math.inf, math.inf, [("web-0", res.cpu.min, res.cpu.max,
                                            int(res.memory.min), int(res.memory.max))])["web-0"]
    got = _placed_slice(spec, call)
    assert (got["cpu_weight"], got["cpu_quota"], got["memory_min"], got["memory_high"],
            got["memory_max"]) == (core.cpu_weight, core.cpu_quota_percent, core.memory_min,
                                   core.memory_high, core.memory_max)
    assert got["memory_min"] <= got["memory_high"] <= got["memory_max"]


def test_the_reviewed_range_numbers():
    got = _placed_slice(_spec("0.1-0.333", "120M-128M"), "place")
    assert got["memory_high"] == 120 << 20  # never below MemoryMin (was 120,795,955)
    assert got["cpu_quota"] == 34  # the ceiling rounded up, as the core does (was 33)
