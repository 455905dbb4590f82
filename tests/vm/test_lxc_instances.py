"""lxc instances placed from an image, on real systemd and cgroup v2 (qemu VM, Debian's lxc).

Two instances of one image are placed on one node at once by the real place.yml (the image
fetched, verified and unpacked once, as for nspawn: docs/images.md). Each is an unprivileged
container (root inside is a uid range of its own on the node) run by `lxc-start -F` as the
instance's unit, on its own overlay root over the shared image, on the node's network. Its
processes are in the unit's cgroup under its slice, whose limits read back from the kernel's
files and hold: a process allocating past memory.max in one container is OOM-killed there,
its neighbour untouched. `stop` runs the hook inside the container through lxc-attach, then
the job's stop signal, and leaves no config, root, mount, uid range or cgroup behind.
"""

from __future__ import annotations

import os
import shlex
import time

import pytest
from vmtools import FIGURES, cgroup_dir, flat_keyed, instance, place, read_files, stop, wait_until

from walle import naming
from walle.images import ImageStore, archive
from walle.jobspec import parse_spec
from walle.lab.tiny_image import make_tiny_tree
from walle.service.params import image_args

# Opt-in until it has passed end to end: written this stop, it has not yet run to the end on
# this machine (the VM starved at load 30-40; then a test-side fix at the merge); issue 12.
pytestmark = [pytest.mark.vm, pytest.mark.skipif(
    os.environ.get("WALLE_VM_LXC") != "1",
    reason="lxc on the VM: opt-in (WALLE_VM_LXC=1) until it has passed once end to end")]

STORE = "/var/lib/walle/images"
LXC = "/var/lib/walle/lxc"  # walle_units.LXC_INSTANCES_DIR
IDS = "/run/walle/lxc-ids"  # walle_units.LXC_IDS_DIR
# The job's shell, PID 1 of its container: it handles the stop signal (a PID 1 gets only
# the signals it handles), says who it is, writes into its root, waits.
PAYLOAD = ("trap 'echo walle-signal-INT; exit 0' INT; trap 'echo walle-signal-TERM; exit 0' "
           'TERM; h=$(cat /proc/sys/kernel/hostname); echo "walle-payload $h"; '
           'echo "$h" > "/written-by-$h"; sleep 600 & wait')
SLEEPERS = """cg=/sys/fs/cgroup$(systemctl show -P ControlGroup "$1")
[ "$cg" = /sys/fs/cgroup ] && exit 0
for p in $(find "$cg" -name cgroup.procs -exec cat {} +); do
  [ "$(cat /proc/$p/comm)" = sleep ] && echo "$p"
done
"""


def lxc_job():
    return parse_spec({
        "name": "lxcbox", "kind": "service", "count": 2,
        "resources": {"cpu": 0.2, "memory": "64M"},
        "runtime": {"type": "lxc", "image": "tiny:1.0", "command": "/bin/sh",
                    "args": ["-c", PAYLOAD], "env": {"GREETING": "hello $USER 100%"}},
        "stop": {"pre_stop": ["/bin/cat", "/proc/self/uid_map"], "signal": "SIGINT",
                 "timeout": "20s"},
    })


def sleeper(vm, unit: str) -> int | None:
    pids = vm.run(f"sh /root/sleepers.sh {unit}").stdout.split()
    return int(pids[0]) if pids else None


def journal(vm, unit: str) -> list[str]:
    return vm.run(f"journalctl --no-pager -o cat -u {unit}").stdout.splitlines()


def test_two_lxc_instances_of_one_image_unprivileged_limited_and_removed(vm, walle, tmp_path):
    make_tiny_tree(str(tmp_path / "tiny"), ["/usr/bin/cat", "/usr/bin/sleep", "/usr/bin/tail"])
    store = ImageStore(tmp_path / "store")
    manifest = store.build("tiny:1.0", tmp_path / "tiny")
    image = image_args(manifest.digest, str(store.blob_path(manifest.digest)))
    image_root = f"{STORE}/{archive.cache_dir_name(manifest.digest)}"
    vm.write_file("/root/sleepers.sh", SLEEPERS)
    spec = lxc_job()
    units = [naming.service_unit(spec.name, slot) for slot in (0, 1)]
    stems = [naming.unit_stem(spec.name, slot) for slot in (0, 1)]
    hosts = [stem.replace("_", "-") for stem in stems]  # the container names
    assert vm.run("lxc-start --version").stdout.startswith("5."), "the VM image has no lxc"
    # a VM node says it can run lxc (the scheduler's implicit constraint reads this label)
    (facts,) = walle.apply(("walle_facts", {}))
    labels = facts["ansible_facts"]["walle_node"]["labels"]
    assert labels["runtime_lxc"] == "true" and labels["runtime_nspawn"] == "true", labels
    try:
        started = time.monotonic()
        place(vm, [instance(spec, 0, image=image), instance(spec, 1, image=image)],
              timeout=1200)
        pids = [wait_until(lambda u=u: sleeper(vm, u), 300, f"the payload of {u}")
                for u in units]
        FIGURES["lxc_two_instances_place_to_running_s"] = round(time.monotonic() - started, 1)

        # unprivileged: root inside is an unprivileged uid range, one per instance
        uids = [int(vm.run(f"stat -c %u /proc/{pid}", check=True).stdout) for pid in pids]
        FIGURES["lxc_payload_host_uids"] = uids
        assert 0 not in uids and uids[0] != uids[1], uids
        for pid in pids:
            uid_map = vm.run(f"cat /proc/{pid}/uid_map", check=True).stdout.split()
            assert uid_map[0] == "0" and uid_map[1] != "0", uid_map
        # on the node's network: its ports are the node's
        host_net = vm.run("readlink /proc/1/ns/net", check=True).stdout.strip()
        assert {vm.run(f"readlink /proc/{pid}/ns/net").stdout.strip() for pid in pids} == \
            {host_net}
        # the environment reached the container literally
        environ = vm.run(f"tr '\\0' '\\n' < /proc/{pids[0]}/environ").stdout.splitlines()
        assert "GREETING=hello $USER 100%" in environ, environ

        # in the unit's cgroup (LXC's payload cgroup inside it), under the slice whose limits
        # read back from the kernel's files
        for unit, stem, pid in zip(units, stems, pids, strict=True):
            assert vm.run(f"systemctl show -P Slice {unit}").stdout.strip() == f"{stem}.slice"
            slice_dir = cgroup_dir(vm, f"{stem}.slice")
            files = read_files(vm, slice_dir, ["memory.max", "cpu.max"])
            assert files == {"memory.max": "67108864", "cpu.max": "20000 100000"}, files
            # the unified (0::) line: once LXC has run, the node also shows a named v1
            # hierarchy (1:name=systemd:/, LXC's for systemd containers) above it
            group = vm.run(f"grep '^0::' /proc/{pid}/cgroup", check=True).stdout.strip()
            unit_dir = cgroup_dir(vm, unit)
            assert group.startswith("0::" + unit_dir[len("/sys/fs/cgroup"):] + "/lxc.payload."), \
                group

        # each wrote into its own root: not into the image, not into its neighbour's
        for stem, host in zip(stems, hosts, strict=True):
            listing = vm.run(f"ls {LXC}/{stem}/root/", check=True).stdout.split()
            assert f"written-by-{host}" in listing, listing
            assert len([n for n in listing if n.startswith("written")]) == 1
        assert vm.run(f"ls {shlex.quote(image_root)} | grep -c written").stdout.strip() == "0"
        assert vm.run(f"stat -c %u {shlex.quote(image_root)}/usr/bin/sleep",
                      check=True).stdout.strip() == "0"  # the shared image is never chowned
        assert f"walle-payload {hosts[0]}" in journal(vm, units[0])

        # a process in instance 0 allocates past memory.max: OOM-killed there, the neighbour
        # untouched (tail buffers a line that never ends)
        hog = vm.run(f"timeout 180 lxc-attach -n {hosts[0]} -P {LXC}/{stems[0]}/lxc -- "
                     "/usr/bin/tail /dev/zero; echo rc=$?", timeout=240).stdout
        assert "rc=" in hog and "rc=124" not in hog, hog  # it ended before the timeout
        events = [flat_keyed(vm.run(f"cat {cgroup_dir(vm, f'{s}.slice')}/memory.events",
                                    check=True).stdout) for s in stems]
        assert events[0]["oom_kill"] >= 1 and events[1]["oom_kill"] == 0, events
        assert sleeper(vm, units[1]) == pids[1]

        # container start to its payload running
        vm.run(f"systemctl stop {units[0]}; systemctl reset-failed {units[0]}", timeout=300)
        before = time.monotonic()
        vm.run(f"systemctl start {units[0]}", check=True, timeout=300)
        wait_until(lambda: sleeper(vm, units[0]), 300, "the restart")
        FIGURES["lxc_container_start_to_payload_s"] = round(time.monotonic() - before, 1)

        # stop: the hook inside the container (its uid map: root -> an unprivileged range),
        # then the job's stop signal to the container's init, then nothing left
        base = vm.run(f"cat {LXC}/{stems[1]}/idmap", check=True).stdout.strip()
        vm.run(f"systemctl stop {units[1]}", check=True, timeout=300)
        lines = journal(vm, units[1])
        hook = [i for i, line in enumerate(lines) if line.split()[:3] == ["0", base, "65536"]]
        signal = [i for i, line in enumerate(lines) if line == "walle-signal-INT"]
        assert hook and signal and hook[-1] < signal[-1], lines[-20:]
        assert vm.run(f"systemctl show -P Result {units[1]}").stdout.strip() == "success"
        assert vm.run(f"test -e {LXC}/{stems[1]} && echo left || echo gone"
                      ).stdout.strip() == "gone"
        assert vm.run(f"grep -c {LXC}/{stems[1]} /proc/mounts").stdout.strip() == "0"
        assert vm.run(f"test -e {IDS}/{base} && echo held || echo free").stdout.strip() == "free"
        assert sleeper(vm, units[0]) is not None  # the neighbour runs on
    finally:
        stop(vm, *units)
    assert vm.run(f"ls -A {LXC}").stdout.split() == []
    assert vm.run(f"ls -A {IDS}").stdout.split() == []
    assert vm.run("find /sys/fs/cgroup -name 'lxc.*' | head -3").stdout.split() == []
    assert vm.run(f"test -x {image_root}/usr/bin/sleep && echo ok").stdout.strip() == "ok"
