"""Pure checks of the VM harness (no VM is booted: these run in the default fast tier)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from walle.lab import vm as walle_vm

IMAGE = walle_vm.VmImage(disk=Path("/c/disk.img"), kernel=Path("/c/vmlinuz"),
                         initrd=Path("/c/initrd.img"), key=Path("/c/id_ed25519"))


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_qemu_uses_tcg_two_cpus_an_overlay_and_a_loopback_ssh_forward():
    argv = walle_vm.qemu_argv(IMAGE, Path("/w/overlay.qcow2"), 2345, Path("/w/console.log"))
    assert _option(argv, "-accel") == "tcg"
    assert _option(argv, "-smp") == "2"
    assert _option(argv, "-m") == "1024"
    assert _option(argv, "-drive") == "file=/w/overlay.qcow2,format=qcow2,if=virtio"
    assert "hostfwd=tcp:127.0.0.1:2345-:22" in _option(argv, "-nic")
    assert "systemd.unified_cgroup_hierarchy=1" in _option(argv, "-append").split()
    assert str(IMAGE.disk) not in " ".join(argv)  # the cached image is only a backing file


def test_inventory_points_ansible_at_the_forwarded_port_with_the_vm_key():
    text = walle_vm.inventory_text(2345, IMAGE.key)
    parser = configparser.ConfigParser(allow_no_value=True, delimiters=(" ",))
    parser.read_string(text)
    (host_line,) = parser["vm"].keys()
    fields = dict(f.split("=", 1) for f in shlex.split(host_line + " " + parser["vm"][host_line])
                  if "=" in f)
    assert fields["ansible_host"] == "127.0.0.1"
    assert fields["ansible_port"] == "2345"
    assert fields["ansible_ssh_private_key_file"] == str(IMAGE.key)
    assert "StrictHostKeyChecking=no" in fields["ansible_ssh_common_args"]


def test_image_key_changes_with_the_recipe_and_the_kernel():
    rootfs = Path("/var/cache/walle/rootfs/bookworm-abc")
    base = walle_vm.image_key(rootfs)
    assert base.startswith("bookworm-abc-")
    assert walle_vm.image_key(rootfs, recipe="other") != base
    assert walle_vm.image_key(rootfs, kernel_package="linux-image-amd64") != base
