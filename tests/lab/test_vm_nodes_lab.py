"""VM nodes in the lab (`walle lab up --vm-nodes`): a qemu VM on the lab's bridge (a tap
device, its own address), provisioned by the same site.yml as the nspawn nodes, joins the
pool through Serf and Consul measuring `runtime_nspawn` true (its own kernel, a cgroup v2
tree with the controllers), where a lab nspawn node measures false. An nspawn job submitted
with `walle run` is placed by the scheduler there and nowhere else (the implicit runtime
constraint), passes its check, and its slice's limits read back from the VM's cgroup files.

One lab for the module: one nspawn node and one VM node. It costs minutes under tcg (the VM's
boot and site.yml on it); the figures (boot to SSH, to joined, place to passing) are printed
and written to <basetemp>/vm-nodes-figures.json.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_scheduler_lab import running_pool

from walle import naming
from walle.adapters.runner import run_command
from walle.cli.main import main as walle_main
from walle.images import ImageStore
from walle.lab import vm as walle_vm
from walle.lab.tiny_image import make_tiny_tree

# Opt-in until it has passed end to end: a tcg VM node needs a quiet machine (site.yml on it
# did not finish in 900 s at load 25+ and was not reached in the lead's run); issue 12.
pytestmark = [pytest.mark.lab, pytest.mark.vm, pytest.mark.timeout(2400), pytest.mark.skipif(
    os.environ.get("WALLE_LAB_VM_NODES") != "1",
    reason="VM nodes in the lab: opt-in (WALLE_LAB_VM_NODES=1) until it has passed once")]
PORT = 8090
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def vm_pool(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    reason = walle_vm.qemu_available()
    if reason:
        pytest.skip(f"VM nodes need qemu: {reason}")
    # the control side's image store, for `walle run` here and the scheduler it starts
    store = tmp_path_factory.mktemp("images")
    old_store = os.environ.get("WALLE_IMAGE_STORE")
    os.environ["WALLE_IMAGE_STORE"] = str(store)
    started = time.monotonic()

    def progress(msg: str) -> None:
        found = re.search(r"(node\d+) \(VM\) answers on SSH after ([\d.]+)s", msg)
        if found:
            FIGURES["vm_node_boot_to_ssh_s"] = float(found.group(2))

    try:
        with running_pool("vmn", schedulers=1, nodes=1, vm_nodes=1, progress=progress) as pool:
            # provisioned, in Consul's catalog, its facts (labels) in its node meta
            FIGURES["vm_node_up_to_joined_s"] = round(time.monotonic() - started, 1)
            yield pool
    finally:
        if old_store is None:
            os.environ.pop("WALLE_IMAGE_STORE", None)
        else:
            os.environ["WALLE_IMAGE_STORE"] = old_store
        out = tmp_path_factory.getbasetemp() / "vm-nodes-figures.json"
        out.write_text(json.dumps(FIGURES, indent=2) + "\n")
        print(f"\nvm nodes figures (load {os.getloadavg()[0]:.1f}): {FIGURES}", file=sys.stderr)


def on(lab, node: str, script: str) -> str:
    out = run_command(str(lab.inventory_path), [node], ["sh", "-c", script], timeout=120)
    assert out[node].rc == 0, out[node]
    return out[node].stdout


def test_an_nspawn_job_lands_on_the_vm_node_and_its_limits_are_the_kernels(vm_pool, tmp_path):
    pool, lab = vm_pool, vm_pool.lab
    vm_node = next(n.name for n in lab.nodes if n.is_vm)
    nspawn_node = next(n.name for n in lab.nodes if not n.is_vm)
    labels = {n.name: dict(n.labels) for n in pool.snapshot().nodes}
    assert labels[vm_node]["runtime_nspawn"] == "true", labels
    assert labels[nspawn_node]["runtime_nspawn"] == "false", labels
    # a machine of its own on the lab bridge: its address, its kernel's cgroup v2 controllers
    address = next(n.address for n in lab.nodes if n.is_vm)
    assert on(lab, vm_node, "ip -4 -o addr show scope global").split()[3] == f"{address}/24"
    assert {"cpu", "memory", "pids"} <= set(
        on(lab, vm_node, "cat /sys/fs/cgroup/cgroup.controllers").split())

    tree = tmp_path / "tiny"
    make_tiny_tree(str(tree), ["/usr/bin/systemd-socket-activate", "/usr/bin/cat"])
    ImageStore(Path(os.environ["WALLE_IMAGE_STORE"])).build("tiny:1.0", tree)
    spec = tmp_path / "boxed.yml"
    spec.write_text(yaml.safe_dump({
        "name": "boxed", "kind": "service", "count": 1,
        "resources": {"cpu": 0.2, "memory": "64M"},
        # a TCP listener inside the container (host network): its check passes once it runs
        "runtime": {"type": "nspawn", "image": "tiny:1.0",
                    "command": "/usr/bin/systemd-socket-activate",
                    "args": [f"--listen={PORT}", "--accept", "--inetd", "/usr/bin/cat"]},
        "health": {"type": "tcp", "port": PORT, "interval": "2s", "timeout": "2s"},
        "service": {"port": PORT},
        "update": {"health_timeout": "600s"},
    }))
    started = time.monotonic()
    assert walle_main(["run", str(spec), "--wait", "900",
                       "--consul-addr", lab.consul_http_addr]) == 0
    FIGURES["nspawn_job_run_to_passing_s"] = round(time.monotonic() - started, 1)

    records = pool.records("boxed")
    assert [(r.alloc.node, r.alloc.state) for r in records.values()] == [(vm_node, "running")]
    assert pool.active_units("boxed") == {nspawn_node: [], vm_node: ["walle-boxed-0.service"]}
    assert pool.dns_nodes("boxed") == {vm_node}  # its check passes

    grant = next(iter(records.values())).alloc.grant
    stem = naming.unit_stem("boxed", 0)
    files = on(lab, vm_node, f"cg=/sys/fs/cgroup$(systemctl show -P ControlGroup {stem}.slice)"
                             " && cat $cg/memory.max $cg/cpu.max $cg/cpu.weight").splitlines()
    assert files == [str(grant.memory_max), f"{grant.cpu_quota_percent * 1000} 100000",
                     str(grant.cpu_weight)], (files, grant)
    assert grant.memory_max == 64 * 1024**2 and grant.cpu_quota_percent == 20
