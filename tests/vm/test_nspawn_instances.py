"""nspawn instances placed from an image, on real systemd and cgroup v2 (qemu VM).

Two instances of one image are placed on one node at once by the real place.yml (the image
fetched, verified and unpacked once from the control side's store, docs/images.md). Each runs
on its own overlay root over the shared image, in its own user namespace (root inside is an
unprivileged uid range on the node, a different one per instance), inside its slice, whose
limits read back from the cgroup files. What one writes, its neighbour and the image never
see; its output is in the unit's journal (what `walle logs` reads); `stop` runs the hook
inside the container and removes the instance's root.
"""

from __future__ import annotations

import shlex
import time

import pytest
from vmtools import FIGURES, cgroup_dir, instance, place, read_files, stop, wait_until

from walle import naming
from walle.images import ImageStore, archive
from walle.jobspec import parse_spec
from walle.lab.tiny_image import make_tiny_tree
from walle.service.params import image_args

pytestmark = pytest.mark.vm

STORE = "/var/lib/walle/images"
INSTANCES = "/var/lib/walle/instances"
# The job's own shell, inside the container: says who it is, writes into its root, sleeps.
PAYLOAD = ('h=$(cat /proc/sys/kernel/hostname); echo "walle-payload $h"; '
           'echo "$h" > "/written-by-$h"; exec sleep 600')
SLEEPERS = """cg=/sys/fs/cgroup$(systemctl show -P ControlGroup "$1")
for p in $(find "$cg" -name cgroup.procs -exec cat {} +); do
  [ "$(cat /proc/$p/comm)" = sleep ] && echo "$p"
done
"""


def boxed_job():
    return parse_spec({
        "name": "boxed", "kind": "service", "count": 2,
        "resources": {"cpu": 0.2, "memory": "64M"},
        "runtime": {"type": "nspawn", "image": "tiny:1.0", "command": "/bin/sh",
                    "args": ["-c", PAYLOAD]},
        "stop": {"pre_stop": ["/bin/cat", "/proc/self/uid_map"], "timeout": "10s"},
    })


def sleeper(vm, unit: str) -> int | None:
    pids = vm.run(f"sh /root/sleepers.sh {unit}").stdout.split()
    return int(pids[0]) if pids else None


def test_two_instances_of_one_image_run_at_once_each_on_its_own_root(vm, tmp_path):
    make_tiny_tree(str(tmp_path / "tiny"), ["/usr/bin/cat", "/usr/bin/sleep"])
    store = ImageStore(tmp_path / "store")
    manifest = store.build("tiny:1.0", tmp_path / "tiny")
    image = image_args(manifest.digest, str(store.blob_path(manifest.digest)))
    image_root = f"{STORE}/{archive.cache_dir_name(manifest.digest)}"
    vm.write_file("/root/sleepers.sh", SLEEPERS)
    spec = boxed_job()
    units = [naming.service_unit(spec.name, slot) for slot in (0, 1)]
    stems = [naming.unit_stem(spec.name, slot) for slot in (0, 1)]
    try:
        started = time.monotonic()
        place(vm, [instance(spec, 0, image=image), instance(spec, 1, image=image)],
              timeout=1200)
        pids = [wait_until(lambda u=u: sleeper(vm, u), 300, f"the payload of {u}")
                for u in units]
        FIGURES["nspawn_two_instances_place_to_running_s"] = round(
            time.monotonic() - started, 1)

        # both at once, each in its own user namespace: root inside, not root on the node
        uids = [int(vm.run(f"stat -c %u /proc/{pid}", check=True).stdout) for pid in pids]
        FIGURES["nspawn_payload_host_uids"] = uids
        assert 0 not in uids and uids[0] != uids[1], uids
        for pid in pids:
            uid_map = vm.run(f"cat /proc/{pid}/uid_map", check=True).stdout.split()
            assert uid_map[0] == "0" and uid_map[1] != "0", uid_map

        # the slice's limits, read back from the kernel's files
        for unit, stem in zip(units, stems, strict=True):
            assert vm.run(f"systemctl show -P Slice {unit}").stdout.strip() == f"{stem}.slice"
            files = read_files(vm, cgroup_dir(vm, f"{stem}.slice"), ["memory.max", "cpu.max"])
            assert files == {"memory.max": "67108864", "cpu.max": "20000 100000"}, files

        # each wrote into its own root: not into the image, not into its neighbour's
        for stem in stems:
            listing = vm.run(f"ls {INSTANCES}/{stem}/root/", check=True).stdout.split()
            mine = f"written-by-{stem.replace('_', '-')}"
            assert mine in listing and len([n for n in listing if n.startswith("written")]) == 1
        assert vm.run(f"ls {shlex.quote(image_root)} | grep -c written").stdout.strip() == "0"
        assert vm.run(f"stat -c %u {shlex.quote(image_root)}/usr/bin/sleep",
                      check=True).stdout.strip() == "0"  # the shared image is never chowned

        # its output is in the unit's journal (walle logs reads `journalctl -u <unit>`)
        journal = vm.run(f"journalctl --no-pager -o cat -u {units[0]}").stdout
        assert f"walle-payload {stems[0].replace('_', '-')}" in journal, journal[-2000:]

        # a restart of one instance: container start to its payload running
        before = time.monotonic()
        vm.run(f"systemctl restart {units[0]}", check=True, timeout=300)
        wait_until(lambda: sleeper(vm, units[0]) not in (None, pids[0]), 300, "the restart")
        FIGURES["nspawn_container_start_to_payload_s"] = round(time.monotonic() - before, 1)

        # stop: the hook runs inside the container (its uid map: root -> an unprivileged
        # range), the instance's root is unmounted and removed, the neighbour runs on
        vm.run(f"systemctl stop {units[0]}", check=True, timeout=300)
        journal = vm.run(f"journalctl --no-pager -o cat -u {units[0]}").stdout.splitlines()
        hook = [line.split() for line in journal if line.split()[:1] == ["0"]]
        assert hook and hook[-1][1] != "0", journal[-20:]
        assert vm.run(f"test -e {INSTANCES}/{stems[0]} && echo left || echo gone"
                      ).stdout.strip() == "gone"
        assert vm.run(f"grep -c {INSTANCES}/{stems[0]} /proc/mounts").stdout.strip() == "0"
        assert sleeper(vm, units[1]) == pids[1]
    finally:
        stop(vm, *units)
    assert vm.run(f"ls -A {INSTANCES}").stdout.split() == []
    assert vm.run(f"test -x {image_root}/usr/bin/sleep && echo ok").stdout.strip() == "ok"
