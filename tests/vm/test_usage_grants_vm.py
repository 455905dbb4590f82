"""Usage-driven grants on real cgroup v2 (issue 13 item 3), in the vm tier's qemu VM.

The leader's decision chain, driven by hand at each sample instead of by Consul: the real
walle-exporter (roles/exporter) measures the instances from their cgroup files, its /summary is
parsed by adapters/usage.py, service/elastic.py ElasticGrants (streaks, core usage_grants)
decides, and the new grant reaches the kernel through walle_slice with the arguments
grants.yml gets (service/params.py slice_args): `systemctl set-property --runtime`, no restart.
The assertions read the cgroup files (cpu.max, cpu.stat, memory.high) and the units.

CPU pressure is read from throttling too (cpu.stat nr_throttled of nr_periods, core/grants.py
ElasticPolicy.throttled): under tcg on a loaded host the busy instance's vCPUs are starved
below its quota (0.84 of a 100 % quota was measured), so its usage alone never reached the
pressing threshold and the CPU case failed on every run before throttling was read. The busy
instance runs two busy loops: one thread under a whole-core quota can never be throttled.

Figures: seconds from an instance starting to press its limit to its grant rising in the
kernel, and grant changes per hour while usage holds steady.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import vmtools
from vmtools import FIGURES, cgroup_dir, flat_keyed, read_files, show, wait_until

from walle import naming
from walle.adapters.usage import summary_usage
from walle.core.grants import MEMORY_HIGH_FRACTION, grants_for
from walle.core.model import Allocation, Capacity, Node
from walle.jobspec import parse_spec
from walle.service.elastic import ElasticGrants, Reading
from walle.service.params import slice_args

pytestmark = pytest.mark.vm

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
EXPORTER = "/root/walle_exporter.py"
EXPORTER_UNIT = "elastic-exporter"
NODE = Node("vm", Capacity(cpu=2.0, memory=1024 * MIB))  # the VM as the leader sees it
SAMPLE_TIMEOUT = 900  # seconds for one phase: tcg under a loaded host is slow

BUSY = ["/bin/sh", "-c", "while :; do :; done & while :; do :; done"]  # two threads' worth
WAKES_UP = ["/bin/sh", "-c", "while [ ! -e /run/elastic-wake ]; do sleep 0.2; done; "
                             "while :; do :; done"]
HUNGRY = """\
import time
chunks = []
for i in range(40):
    chunks.append(bytearray(8 << 20))  # touched: 8 MiB resident each
    with open('/run/hungry.log', 'w') as f:
        f.write(str(len(chunks) * 8))
    time.sleep(0.25)
with open('/run/hungry.log', 'w') as f:
    f.write('done')
time.sleep(3600)
"""


def spec(name: str, cpu: str, memory: str):
    return parse_spec({"name": name, "kind": "service", "count": 1,
                       "resources": {"cpu": cpu, "memory": memory},
                       "runtime": {"command": "/bin/true"}})


class Instances:
    """Instances on the VM with their grants, and the leader's decision loop over them."""

    def __init__(self, vm, walle, units_to_stop, specs):
        self.vm, self.walle, self.units = vm, walle, units_to_stop
        self.specs = {s.name: s for s in specs}
        demands = [(naming.instance_id(s.name, 0), s.resources.cpu.min, s.resources.cpu.max,
                    int(s.resources.memory.min), int(s.resources.memory.max)) for s in specs]
        grants = grants_for(NODE.capacity.cpu, NODE.capacity.memory, demands)
        self.allocs = {}
        for s in specs:
            key = naming.instance_id(s.name, 0)
            res = s.resources
            self.allocs[key] = Allocation(
                s.name, 0, NODE.name, Capacity(res.cpu.min, int(res.memory.min)),
                Capacity(res.cpu.max, int(res.memory.max)), "d", "r", state="running",
                grant=grants[key])
        self.elastic = ElasticGrants()
        self.changes: list[tuple[float, str, str]] = []  # (time, key, message)

    def start(self, key: str, argv: list[str]) -> str:
        a = self.allocs[key]
        made, started = self.walle.apply(
            ("walle_slice", slice_args(self.specs[a.job], 0, a.grant)),
            ("walle_workload", dict(name=naming.unit_stem(a.job, 0),
                                    slice=naming.instance_slice(a.job, 0), command=argv[0],
                                    args=argv[1:], restart="no", state="started",
                                    privileged=True)))
        self.units.append(started["units"][0])
        return cgroup_dir(self.vm, made["unit"])

    def summary(self) -> dict:
        out = self.vm.run("curl -sf http://127.0.0.1:9851/summary", check=True).stdout
        return json.loads(out)

    def sample(self) -> list[str]:
        """One reading and the decision on it, applied like grants.yml; the keys changed."""
        started = time.monotonic()
        reading = Reading(started, summary_usage(NODE.name, self.summary()))
        decided = self.elastic.decide({NODE.name: NODE}, list(self.allocs.values()), reading)
        if not decided:
            return []
        results = self.walle.apply(*(("walle_slice", slice_args(self.specs[d.alloc.job], 0,
                                                                d.alloc.grant))
                                     for d in decided))
        assert all(r["changed"] for r in results)
        now = time.monotonic()
        self.elastic.applied([d.alloc.key for d in decided], now)
        for d in decided:
            self.allocs[d.alloc.key] = d.alloc
            self.changes.append((now, d.alloc.key, d.message))
        self.summary()  # the exporter's next CPU figure starts after the change
        return [d.alloc.key for d in decided]

    def sample_until(self, done, what: str) -> None:
        """Sample until done(keys changed by the last sample)."""
        deadline = time.monotonic() + SAMPLE_TIMEOUT
        while not done(self.sample()):
            assert time.monotonic() < deadline, f"{what}: not after {SAMPLE_TIMEOUT} s; " \
                                                f"changes {self.changes}"

    def last_change(self, key: str) -> float:
        return max(at for at, changed, _ in self.changes if changed == key)

    def quota(self, key: str) -> int:
        return self.allocs[key].grant.cpu_quota_percent


@pytest.fixture(autouse=True)
def patient_ansible(monkeypatch):
    """Each sample may run a playbook: on a loaded shared host one module call under tcg has
    been seen to take minutes, past vmtools' 180 s."""
    monkeypatch.setattr(vmtools, "PLAYBOOK_TIMEOUT", 600)


@pytest.fixture
def exporter(vm):
    vm.write_file(EXPORTER, (REPO / "roles/exporter/files/walle_exporter.py").read_text())
    vm.run(f"systemd-run -q --unit={EXPORTER_UNIT} /usr/bin/python3 {EXPORTER} "
           "--address 127.0.0.1 --port 9851 --node vm --min-interval 0.5", check=True)
    wait_until(lambda: vm.run("curl -sf http://127.0.0.1:9851/healthz").returncode == 0,
               60, "the exporter to answer")
    yield
    vm.run(f"systemctl stop {EXPORTER_UNIT}; systemctl reset-failed {EXPORTER_UNIT}; "
           "rm -f /run/elastic-wake /run/hungry.log", timeout=60)


# Opt-in until it has passed end to end (WALLE_VM_CPU_GRANTS=1): its first half passed in the
# lead's run (hot 100 -> 150 %, calm 100 -> 50 %, nr_throttled grew; 860 s at load 6-12), its
# second half (the neighbour wakes) has not run yet; issue 13.
@pytest.mark.skipif(os.environ.get("WALLE_VM_CPU_GRANTS") != "1",
                    reason="CPU grants on the VM: opt-in (WALLE_VM_CPU_GRANTS=1) until it has "
                           "passed once end to end")
def test_cpu_quota_rises_while_the_neighbour_idles_and_falls_when_it_wakes(
        vm, walle, units_to_stop, exporter):
    hot, calm = spec("hot", "0.5-1.8", "64M"), spec("calm", "0.5-1.8", "64M")  # cpu only
    cluster = Instances(vm, walle, units_to_stop, [hot, calm])
    assert cluster.quota("hot-0") == cluster.quota("calm-0") == 100  # the declared split
    calm_dir = cluster.start("calm-0", WAKES_UP)
    hot_dir = cluster.start("hot-0", BUSY)
    pressing_since = time.monotonic()
    main_pid = show(vm, naming.service_unit("hot", 0), "MainPID")["MainPID"]
    throttled_before = flat_keyed(read_files(vm, hot_dir, ["cpu.stat"])["cpu.stat"])

    # calm idles: it falls toward its floor, and hot (throttled at its quota) takes the room
    cluster.sample_until(lambda _: cluster.quota("hot-0") > 100, "hot's quota to rise")
    FIGURES["elastic_cpu_press_to_rise_s"] = round(cluster.last_change("hot-0") - pressing_since,
                                                   1)
    cluster.sample_until(lambda _: (cluster.quota("hot-0"), cluster.quota("calm-0")) == (150, 50),
                         "hot at the room its idle neighbour leaves")
    assert read_files(vm, hot_dir, ["cpu.max"])["cpu.max"] == "150000 100000"
    assert read_files(vm, calm_dir, ["cpu.max"])["cpu.max"] == "50000 100000"
    stat = read_files(vm, hot_dir, ["cpu.stat"])["cpu.stat"]
    FIGURES["elastic_cpu_stat_hot"] = stat
    throttled = flat_keyed(stat)
    assert throttled["nr_throttled"] > throttled_before["nr_throttled"]  # what the rise read
    # the rise names what pressed: throttling (a starved vCPU) or usage (a quieter host);
    # the lead's run of 2026-12-02 rose on usage, which the old assertion did not accept
    assert any("throttled in" in msg or "using" in msg
               for _, key, msg in cluster.changes if key == "hot-0"), cluster.changes

    steady_from, before = time.monotonic(), len(cluster.changes)
    for _ in range(6):  # demand holds (hot still throttled, no room left): no change
        cluster.sample()
    steady_s = time.monotonic() - steady_from
    FIGURES["elastic_steady_samples"] = 6
    FIGURES["elastic_steady_s"] = round(steady_s, 1)
    FIGURES["elastic_steady_changes_per_hour"] = round(
        (len(cluster.changes) - before) * 3600 / steady_s, 1)
    assert len(cluster.changes) == before, cluster.changes[before:]

    vm.run("touch /run/elastic-wake", check=True)  # the neighbour wakes up
    woke = time.monotonic()
    cluster.sample_until(lambda _: cluster.quota("hot-0") < 150, "hot's quota to fall")
    FIGURES["elastic_cpu_neighbour_wakes_to_fall_s"] = round(cluster.last_change("hot-0") - woke,
                                                             1)
    assert cluster.quota("calm-0") > 50  # the woken neighbour, throttled at its floor, rose
    cluster.sample_until(lambda _: cluster.quota("hot-0") == cluster.quota("calm-0") == 100,
                         "an even split again")
    assert read_files(vm, hot_dir, ["cpu.max"])["cpu.max"] == "100000 100000"
    assert read_files(vm, calm_dir, ["cpu.max"])["cpu.max"] == "100000 100000"
    after = show(vm, naming.service_unit("hot", 0), "MainPID", "NRestarts", "ActiveState")
    assert after == {"MainPID": main_pid, "NRestarts": "0", "ActiveState": "active"}
    FIGURES["elastic_cpu_changes"] = [f"{key}: {msg}" for _, key, msg in cluster.changes]


def test_memory_high_rises_as_a_hungry_instance_grows(vm, walle, units_to_stop, exporter):
    hungry = spec("hungry", "1", "64M-512M")  # memory only
    cluster = Instances(vm, walle, units_to_stop, [hungry])
    # at its floor, as an idle instance falls to it (the cpu test sees the fall on the kernel)
    a = cluster.allocs["hungry-0"]
    cluster.allocs["hungry-0"] = replace(a, grant=replace(a.grant, memory_high=64 * MIB))
    vm.write_file("/root/hungry.py", HUNGRY)
    folder = cluster.start("hungry-0", ["/usr/bin/python3", "/root/hungry.py"])
    started = time.monotonic()
    highs = [int(read_files(vm, folder, ["memory.high"])["memory.high"])]
    assert highs[0] == 64 * MIB

    def grown(changed) -> bool:
        high = int(read_files(vm, folder, ["memory.high"])["memory.high"])
        if high != highs[-1]:
            highs.append(high)
        progress = vm.run("cat /run/hungry.log").stdout.strip()
        return progress == "done" and not changed

    cluster.sample_until(lambda changed: bool(changed), "memory.high to rise")
    FIGURES["elastic_memory_press_to_rise_s"] = round(cluster.changes[0][0] - started, 1)
    cluster.sample_until(grown, "the hungry instance to reach 320 MiB")
    FIGURES["elastic_memory_high_mib"] = [h // MIB for h in highs]
    assert highs == sorted(highs) and len(highs) >= 3  # it rose step by step as it grew
    assert highs[-1] >= 320 * MIB
    assert highs[-1] <= int(512 * MIB * MEMORY_HIGH_FRACTION)
    unit = show(vm, naming.service_unit("hungry", 0), "ActiveState", "NRestarts")
    assert unit == {"ActiveState": "active", "NRestarts": "0"}  # never killed, never restarted
    events = flat_keyed(read_files(vm, folder, ["memory.events"])["memory.events"])
    assert events.get("oom_kill", 0) == 0
    FIGURES["elastic_memory_high_events"] = events.get("high", 0)
