"""VM nodes of the lab (walle.lab.nodes with walle.lab.vm): how qemu is started on the lab
bridge, what the guest is told on its kernel command line, and how a VM node is ended."""

from __future__ import annotations

import configparser
import json
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from walle.lab import faults, nodes
from walle.lab.vm import KERNEL_CMDLINE, LabIdentity, VmError, VmImage, lab_qemu_argv

IMAGE = VmImage(disk=Path("/c/disk.img"), kernel=Path("/c/vmlinuz"),
                initrd=Path("/c/initrd.img"), key=Path("/c/id_ed25519"))
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq+/x= walle-lab-vmn"
IDENTITY = LabIdentity(name="node4", address="10.77.3.14", host="10.77.3.1",
                       ssh_public_key=KEY)


def argv() -> list[str]:
    return lab_qemu_argv(IMAGE, Path("/l/node4/disk.qcow2"), Path("/l/node4/console.log"),
                         "wt3v4", "52:54:00:77:03:04", IDENTITY, memory_mb=1536)


def test_a_lab_vm_node_is_on_a_tap_device_not_user_networking():
    args = argv()
    assert args[args.index("-netdev") + 1] == "tap,id=lab,ifname=wt3v4,script=no,downscript=no"
    assert args[args.index("-device") + 1] == "virtio-net-pci,netdev=lab,mac=52:54:00:77:03:04"
    assert "-nic" not in args and not any("hostfwd" in a for a in args)
    assert args[args.index("-m") + 1] == "1536"
    assert args[args.index("-drive") + 1] == "file=/l/node4/disk.qcow2,format=qcow2,if=virtio"
    assert "-no-reboot" not in args  # a reboot inside is a reboot, as on a machine


def test_the_lab_identity_is_on_the_kernel_command_line():
    cmdline = argv()[argv().index("-append") + 1]
    assert cmdline.startswith(KERNEL_CMDLINE)  # no_timer_check and the rest are kept
    words = cmdline.split()
    assert "systemd.hostname=node4" in words
    assert "walle.address=10.77.3.14/24" in words and "walle.host=10.77.3.1" in words
    # the key's type and body, no spaces (the comment is left out)
    assert "walle.ssh_key=ssh-ed25519,AAAAC3NzaC1lZDI1NTE5AAAAIHq+/x=" in words


@pytest.mark.parametrize(("field", "value", "says"), [
    ("address", "10.77.3.300", "address '10.77.3.300' is not an IPv4"),
    ("host", "evil quiet init=/bin/sh", "host 'evil quiet init=/bin/sh' is not an IPv4"),
    ("name", "node4 init=/bin/sh", "name 'node4 init=/bin/sh'"),
    ("ssh_public_key", "ssh-ed25519 AAAA$(reboot)", "SSH public key"),
    ("ssh_public_key", "AAAA", "SSH public key"),
])
def test_a_value_that_would_add_kernel_arguments_is_refused(field, value, says):
    identity = LabIdentity(**{**IDENTITY.__dict__, field: value})
    with pytest.raises(VmError, match=says.replace("(", r"\(")):
        identity.cmdline()


def test_a_state_file_from_before_vm_nodes_loads_its_nodes_as_nspawn(tmp_path, monkeypatch):
    monkeypatch.setattr(nodes, "LAB_ROOT", tmp_path)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "state.json").write_text(json.dumps({
        "name": "old", "index": 7, "processes": {},
        "nodes": [{"name": "node1", "address": "10.77.7.11", "pid": 0, "root": "/r"}]}))
    node = nodes.Lab("old").nodes[0]
    assert (node.kind, node.is_vm, node.tap) == ("nspawn", False, "")


def test_killing_a_vm_node_ends_its_process_by_pid():
    proc = subprocess.Popen(["sleep", "300"])  # stands for qemu
    try:
        nodes._stop_vm(nodes.LabNode(name="node2", address="10.77.9.12", pid=proc.pid,
                                     kind="vm"), grace=0.0)
        assert not psutil.pid_exists(proc.pid)  # killed and reaped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def mixed_lab(tmp_path, monkeypatch) -> nodes.Lab:
    """Lab `mix` as its state file records it: nspawn node1, VM node2 (nothing runs)."""
    monkeypatch.setattr(nodes, "LAB_ROOT", tmp_path)
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "state.json").write_text(json.dumps({
        "name": "mix", "index": 5, "processes": {},
        "nodes": [{"name": "node1", "address": "10.77.5.11", "pid": 0, "root": "/r"},
                  {"name": "node2", "address": "10.77.5.12", "pid": 0, "kind": "vm",
                   "tap": "wt5v2"}]}))
    return nodes.Lab("mix")


def test_faults_find_a_vm_nodes_tap_and_refuse_nsenter_into_it(tmp_path, monkeypatch):
    lab = mixed_lab(tmp_path, monkeypatch)
    assert faults.bridge_port(lab, "node1") == "vb-w5-node1"
    assert faults.bridge_port(lab, "node2") == "wt5v2"  # partition/heal act on the tap
    with pytest.raises(nodes.LabError, match="node2 is a VM node"):
        faults.node_exec(lab, "node2", ["true"])


def test_a_vm_nodes_ssh_args_are_ansible_cfgs_with_more_patience():
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[2] / "ansible.cfg")
    ours = nodes.VM_CONNECTION_VARS["ansible_ssh_args"].split()
    theirs = cfg["ssh_connection"]["ssh_args"].split()
    assert ours.index("ServerAliveCountMax=24") == theirs.index("ServerAliveCountMax=2")
    assert [a for a in ours if not a.startswith("ServerAliveCountMax")] == \
        [a for a in theirs if not a.startswith("ServerAliveCountMax")]
    assert nodes.VM_CONNECTION_VARS["ansible_timeout"] > int(cfg["defaults"]["timeout"])


def test_the_inventories_give_vm_nodes_the_patient_connection(tmp_path, monkeypatch):
    lab = mixed_lab(tmp_path, monkeypatch)
    lab._write_inventory()
    hosts = yaml.safe_load(lab.inventory_path.read_text())["all"]["children"]["walle_nodes"][
        "hosts"]
    assert hosts["node2"]["ansible_timeout"] == 120 and "ansible_timeout" not in hosts["node1"]
    host_vars = lab.pool_inventory_path.parent / "host_vars"  # the scheduler's inventory
    assert [p.name for p in host_vars.iterdir()] == ["node2.yml"]
    assert yaml.safe_load((host_vars / "node2.yml").read_text()) == nodes.VM_CONNECTION_VARS
