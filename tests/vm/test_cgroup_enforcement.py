"""What the kernel enforces for the slices and workloads written by walle_slice/walle_workload.

Runs in one qemu VM per session (tests/vm/conftest.py): every slice and workload here is made by
Walle's modules through Ansible; the assertions read cgroup v2 files, systemd's view of the
units and logs written inside the VM.
"""

from __future__ import annotations

import pytest
from vmtools import (
    FIGURES,
    cgroup_dir,
    cpu_fractions,
    flat_keyed,
    make_tiny_image,
    read_files,
    show,
    wait_until,
)

from walle import naming

pytestmark = pytest.mark.vm

BUSY_LOOP = ["/bin/sh", "-c", "while :; do :; done"]
SLEEPER = ["/bin/sleep", "infinity"]
MIB = 1 << 20
HOG = "chunks = []\nfor _ in range(64):\n    chunks.append(b'x' * (8 << 20))\n"  # 512 MiB


def workload(job: str, slot: int, argv: list[str], **extra) -> tuple[str, dict]:
    # These tests measure cgroup enforcement; their programs live in /root and report to
    # /run, which the default sandbox hides (tests/vm/test_sandbox.py covers the sandbox).
    args = dict(name=naming.unit_stem(job, slot), slice=naming.instance_slice(job, slot),
                command=argv[0], args=argv[1:], restart="no", state="started",
                privileged=extra.get("runtime", "exec") == "exec")
    return ("walle_workload", {**args, **extra})


def slice_task(job: str, slot: int, **resources) -> tuple[str, dict]:
    return ("walle_slice", dict(name=naming.instance_slice(job, slot), **resources))


def expected_cgroup_files(spec: dict) -> dict[str, str]:
    """The cgroup v2 file contents the kernel should show for a walle_slice spec (sizes in
    bytes, quota over systemd's default 100 ms period)."""
    period = 100_000
    return {
        "cpu.weight": str(spec["cpu_weight"]),
        "cpu.max": f"{spec['cpu_quota'] * period // 100} {period}",
        "cpuset.cpus": spec["allowed_cpus"],
        "memory.min": str(spec["memory_min"]),
        "memory.high": str(spec["memory_high"]),
        "memory.max": str(spec["memory_max"]),
        "io.weight": f"default {spec['io_weight']}",
        "pids.max": str(spec["tasks_max"]),
    }


def test_vm_has_two_vcpus_and_full_cgroup_v2(vm):
    out = vm.run("nproc; cat /sys/fs/cgroup/cgroup.controllers; stat -fc %T /sys/fs/cgroup",
                 check=True).stdout.split("\n")
    FIGURES["vcpus"] = int(out[0])
    assert int(out[0]) == 2
    assert {"cpu", "cpuset", "memory", "io", "pids"} <= set(out[1].split())
    assert out[2] == "cgroup2fs"


def test_two_vcpus_really_run_in_parallel(vm):
    # Why the weight test pins its workloads: unpinned, two busy loops take a vCPU each.
    # (A harness fact, so plain systemd-run, outside walle.slice.)
    probes = " ".join(f"probe-{i}.service" for i in range(2))
    try:
        for i in range(2):
            vm.run(f"systemd-run -q --unit=probe-{i} -p Slice=probe.slice "
                   "/bin/sh -c 'while :; do :; done'", check=True)
        folder = "/sys/fs/cgroup/probe.slice"
        used = cpu_fractions(vm, [folder], seconds=3)[folder]
    finally:
        vm.run(f"systemctl stop {probes}", timeout=60)
    FIGURES["two_unpinned_busy_loops_used_cpus"] = round(used, 2)
    assert used > 1.6


def test_slice_files_match_the_spec(vm, walle, units_to_stop):
    spec = dict(cpu_weight=250, cpu_quota=150, allowed_cpus="1", memory_min=16 * MIB,
                memory_high=96 * MIB, memory_max=128 * MIB, io_weight=300, tasks_max=64)
    made, started = walle.apply(slice_task("files", 0, **spec), workload("files", 0, SLEEPER))
    units_to_stop.append(started["units"][0])
    assert made["properties"]["CPUQuota"] == "150%"
    folder = cgroup_dir(vm, made["unit"])
    expected = expected_cgroup_files(spec)
    assert read_files(vm, folder, list(expected)) == expected
    procs = vm.run(f"cat {cgroup_dir(vm, started['units'][0])}/cgroup.procs").stdout.split()
    assert str(started["main_pid"]) in procs
    assert folder.endswith("/walle.slice/walle-files.slice/walle-files-0.slice")


def test_memory_max_oom_kills_inside_its_cgroup_only(vm, walle, units_to_stop):
    vm.write_file("/root/hog.py", HOG)
    neighbour, hog = "walle-calm-0.service", "walle-hog-0.service"
    units_to_stop += [neighbour, hog]
    # Tasks run in order: the neighbour's PID is taken before the hog starts.
    _, calm, _, _ = walle.apply(slice_task("calm", 0, memory_max=64 * MIB),
                                workload("calm", 0, SLEEPER),
                                slice_task("hog", 0, memory_max=64 * MIB),
                                workload("hog", 0, ["/usr/bin/python3", "/root/hog.py"]))
    assert calm["main_pid"] > 0
    wait_until(lambda: show(vm, hog, "ActiveState")["ActiveState"] == "failed", 60,
               "the hog to be OOM-killed")
    assert show(vm, hog, "Result")["Result"] == "oom-kill"
    hog_events = flat_keyed(vm.run("cat /sys/fs/cgroup/walle.slice/walle-hog.slice/"
                                   "walle-hog-0.slice/memory.events", check=True).stdout)
    assert hog_events["oom_kill"] >= 1
    calm_dir = cgroup_dir(vm, "walle-calm-0.slice")
    calm_events = flat_keyed(vm.run(f"cat {calm_dir}/memory.events", check=True).stdout)
    assert calm_events["oom_kill"] == 0
    after = show(vm, neighbour, "ActiveState", "MainPID")
    assert after == {"ActiveState": "active", "MainPID": str(calm["main_pid"])}


def test_cpu_quota_of_half_a_cpu_is_enforced(vm, walle, units_to_stop):
    made, started = walle.apply(slice_task("quota", 0, cpu_quota=50),
                                workload("quota", 0, BUSY_LOOP))
    units_to_stop.append(started["units"][0])
    folder = cgroup_dir(vm, made["unit"])
    used = cpu_fractions(vm, [folder], seconds=4)[folder]
    FIGURES["quota_50pct_used_cpus"] = round(used, 3)
    assert used == pytest.approx(0.5, rel=0.10)


def test_cpu_weights_share_one_cpu_in_proportion(vm, walle, units_to_stop):
    # Both instance slices sit in walle-share.slice, so their weights compete with each
    # other; pinned to CPU 0 (AllowedCPUs) they must share it instead of taking a vCPU each.
    weights = (100, 300)
    tasks = []
    for slot, weight in enumerate(weights):
        tasks += [slice_task("share", slot, cpu_weight=weight, allowed_cpus="0"),
                  workload("share", slot, BUSY_LOOP)]
    results = walle.apply(*tasks)
    units_to_stop += [r["units"][0] for r in results[1::2]]
    folders = [cgroup_dir(vm, r["unit"]) for r in results[0::2]]
    used = cpu_fractions(vm, folders, seconds=5)
    low, high = (used[f] for f in folders)
    FIGURES["weights_100_300_used_cpus"] = [round(low, 3), round(high, 3)]
    FIGURES["weights_100_300_ratio"] = round(high / low, 2)
    # One CPU in all (the pinning holds), split 1:3. CFS is fair to within a few scheduler
    # slices (ms) over a 5 s window; 15% on the ratio leaves room for tcg timer jitter on a
    # shared host (measured 2.92-3.08 over eight windows).
    assert low + high == pytest.approx(1.0, abs=0.1)  # ssh, awk, date run on CPU 0 too
    assert high / low == pytest.approx(weights[1] / weights[0], rel=0.15)


BOMB = """\
import os, time
forked = failed = 0
for _ in range(200):
    try:
        pid = os.fork()
    except BlockingIOError:
        failed += 1
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    forked += 1
with open('/run/walle-bomb.out', 'w') as out:
    out.write(f'{forked} {failed}\\n')
time.sleep(600)
"""


def test_tasks_max_stops_a_fork_bomb(vm, walle, units_to_stop):
    tasks_max = 32
    vm.run("rm -f /run/walle-bomb.out", check=True)
    vm.write_file("/root/bomb.py", BOMB)
    made, started = walle.apply(slice_task("bomb", 0, tasks_max=tasks_max),
                                workload("bomb", 0, ["/usr/bin/python3", "/root/bomb.py"]))
    units_to_stop.append(started["units"][0])
    report = wait_until(lambda: vm.run("cat /run/walle-bomb.out").stdout.split(), 90,
                        "the bounded fork bomb to finish")
    forked, failed = map(int, report)
    folder = cgroup_dir(vm, made["unit"])
    files = read_files(vm, folder, ["pids.current", "pids.max"])
    # Linux 6.1 counts the refused forks in pids.events of the forking task's own cgroup (the
    # service); later kernels also count them where the limit sits (the slice).
    service_events = vm.run(f"cat {cgroup_dir(vm, started['units'][0])}/pids.events",
                            check=True).stdout
    FIGURES["fork_bomb_forked_failed"] = [forked, failed]
    assert forked == tasks_max - 1  # the parent is the 32nd task
    assert failed == 200 - forked
    assert int(files["pids.current"]) <= tasks_max
    assert flat_keyed(service_events)["max"] >= 1
    assert vm.run("echo alive", timeout=15).stdout.strip() == "alive"


def test_live_grant_change_keeps_the_workload_running(vm, walle, units_to_stop):
    made, started = walle.apply(slice_task("grant", 0, cpu_quota=50, cpu_weight=100),
                                workload("grant", 0, SLEEPER))
    units_to_stop.append(started["units"][0])
    folder = cgroup_dir(vm, made["unit"])
    assert read_files(vm, folder, ["cpu.max", "cpu.weight"]) == {
        "cpu.max": "50000 100000", "cpu.weight": "100"}
    (regrant,) = walle.apply(slice_task("grant", 0, cpu_quota=150, cpu_weight=400))
    assert regrant["changed"]
    assert set(regrant["applied_live"]) == {"CPUQuota", "CPUWeight"}
    assert read_files(vm, folder, ["cpu.max", "cpu.weight"]) == {
        "cpu.max": "150000 100000", "cpu.weight": "400"}
    after = show(vm, started["units"][0], "MainPID", "ActiveState", "NRestarts")
    assert after == {"MainPID": str(started["main_pid"]), "ActiveState": "active",
                     "NRestarts": "0"}


STUBBORN = """\
log=/run/walle-stop.log
trap 'echo "term $(date +%s.%N)" >> $log' TERM
echo "ready $(date +%s.%N)" >> $log
while :; do sleep 0.1; done
"""
HOOK = """\
echo "hook $(date +%s.%N)" >> /run/walle-stop.log
sleep 0.5
echo "hook-done $(date +%s.%N)" >> /run/walle-stop.log
"""


def test_stop_runs_hook_then_signal_then_sigkill(vm, walle, units_to_stop):
    stop_timeout = 3.0
    vm.run("rm -f /run/walle-stop.log", check=True)
    vm.write_file("/root/stubborn.sh", STUBBORN)
    vm.write_file("/root/hook.sh", HOOK)
    spec = workload("stop", 0, ["/bin/sh", "/root/stubborn.sh"],
                    pre_stop=["/bin/sh", "/root/hook.sh"], stop_signal="SIGTERM",
                    stop_timeout=stop_timeout)
    _, started = walle.apply(slice_task("stop", 0, cpu_weight=100), spec)
    unit = started["units"][0]
    units_to_stop.append(unit)
    wait_until(lambda: "ready" in vm.run("cat /run/walle-stop.log").stdout, 30,
               "the workload to start")
    (stopped,) = walle.apply(("walle_workload", {**spec[1], "state": "stopped"}))
    assert stopped["active_state"] in ("inactive", "failed")
    log = dict(line.split() for line in vm.run("cat /run/walle-stop.log").stdout.splitlines())
    kill_line = vm.run(f"journalctl -u {unit} -o short-unix --no-pager | "
                       "grep -m1 'with signal SIGKILL'", check=True).stdout
    killed = float(kill_line.split()[0])
    hook, hook_done, term = (float(log[k]) for k in ("hook", "hook-done", "term"))
    FIGURES["stop_hook_to_term_s"] = round(term - hook, 2)
    FIGURES["stop_term_to_sigkill_s"] = round(killed - term, 2)
    assert hook < hook_done <= term  # the hook finished before the signal came
    assert stop_timeout * 0.9 <= killed - term <= stop_timeout + 2.0
    result = show(vm, unit, "Result", "ExecMainStatus")
    assert result == {"Result": "timeout", "ExecMainStatus": "9"}


TINY_IMAGE = "/var/lib/walle/images/walle-tiny"  # inside the module's image store


@pytest.fixture
def tiny_image(vm):
    """A minimal machine image in the store: dash and tail with their libraries, copied so
    the container's user namespace can map their ownership (a bind-mounted host /usr cannot)."""
    make_tiny_image(vm, TINY_IMAGE, ["/usr/bin/tail"])
    yield TINY_IMAGE
    vm.run(f"rm -rf {TINY_IMAGE}", timeout=60)


def test_nspawn_runtime_gets_the_slice_limits(vm, walle, tiny_image, units_to_stop):
    spec = dict(memory_max=48 * MIB, cpu_quota=50, tasks_max=16)
    # tail buffers a line that never ends: memory grows until the slice's limit stops it
    made, started = walle.apply(
        slice_task("box", 0, **spec),
        workload("box", 0, ["/usr/bin/tail", "/dev/zero"], runtime="nspawn",
                 image=tiny_image))
    unit = started["units"][0]
    units_to_stop.append(unit)
    assert "systemd-nspawn" in show(vm, unit, "ExecStart")["ExecStart"]
    folder = cgroup_dir(vm, made["unit"])
    assert read_files(vm, folder, ["memory.max", "cpu.max", "pids.max"]) == {
        "memory.max": str(spec["memory_max"]), "cpu.max": "50000 100000", "pids.max": "16"}
    # The process inside the container allocates past memory.max and is OOM-killed there:
    # the kill is counted in the slice, so the container's payload was under its limits.
    wait_until(lambda: show(vm, unit, "ActiveState")["ActiveState"] in ("failed", "inactive"),
               60, "the container's hog to be OOM-killed")
    assert flat_keyed(vm.run(f"cat {folder}/memory.events").stdout)["oom_kill"] >= 1
