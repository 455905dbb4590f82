"""The local lab: a pool of real systemd nodes on this machine.

Each node is a `systemd-nspawn --boot` container on the lab's own bridge, with its own address,
sshd and a copy-on-write view (overlayfs) of the cached rootfs, so a node boots in seconds and
costs only what it writes. Several labs can exist at once: each gets its own index k, bridge
`walle<k>` and subnet 10.77.<k>.0/24 (the host is .1, nodes are .11 upwards).

A lab can also hold VM nodes (`up(vm_nodes=K)`, `add(vm=True)`): qemu VMs booted from the vm
tier's cached image (walle.lab.vm), their NIC a tap device on the lab's bridge, their address
and the lab's SSH key given on the kernel command line. They run what an nspawn node runs
(site.yml, Serf, the scheduler places on them) but on their own kernel with a real cgroup v2
tree, so the limits of the instances placed there are enforced and container runtimes run.

Everything a lab starts or makes is recorded in `<LAB_ROOT>/<name>/state.json` (PIDs, mounts,
bridge), so `down()` removes exactly that, even from another process or after a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import yaml

from walle.lab import vm as walle_vm
from walle.lab.rootfs import ensure_rootfs
from walle.lab.vm import tail as _tail

LAB_ROOT = Path(os.environ.get("WALLE_LAB_ROOT", "/var/lib/walle/lab"))
SUBNET_PREFIX = "10.77"
MAX_LABS = 200
FIRST_NODE_HOST = 11
BOOT_TIMEOUT = 90.0
# A VM node's memory: site.yml, Serf, the exporter and a few instances under tcg (a guest
# with 1 GiB or less panicked once at high host load); WALLE_LAB_VM_MEMORY_MB: more or less.
VM_MEMORY_MB = int(os.environ.get("WALLE_LAB_VM_MEMORY_MB", "1536"))
# Ansible's connection to a VM node: a tcg guest on a loaded host can take tens of seconds to
# accept a connection or answer a keepalive, where ansible.cfg allows 5 s and 2 x 5 s. The
# rest of ansible.cfg's ssh_args is repeated (a host's ansible_ssh_args replaces them).
VM_CONNECTION_VARS = {
    "ansible_timeout": 120,
    "ansible_ssh_args": "-C -o ControlMaster=auto -o ControlPersist=600s "
                        "-o ServerAliveInterval=5 -o ServerAliveCountMax=24",
}
CONSUL_HTTP_PORT, CONSUL_DNS_PORT = 8500, 8600
SERF_PORT, SERF_RPC_BASE = 7946, 17373
# The host's Serf agent runs the nodes' gossip timings: the profile roles/consul renders for
# its default consul_gossip_* values (a test holds the two equal).
SERF_PROFILE = "local"

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class LabNode:
    name: str
    address: str
    pid: int = 0  # the systemd-nspawn process, or qemu's for a VM node
    root: str = ""  # merged overlay mount the node boots from (nspawn nodes)
    kind: str = "nspawn"  # or "vm"
    tap: str = ""  # a VM node's tap device on the lab bridge

    @property
    def is_vm(self) -> bool:
        return self.kind == "vm"


@dataclass
class LabState:
    name: str
    index: int
    nodes: list[LabNode] = field(default_factory=list)
    processes: dict[str, int] = field(default_factory=dict)  # extra daemons (serf, consul)

    @property
    def bridge(self) -> str:
        return f"walle{self.index}"

    @property
    def host_address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.index}.1"


class LabError(RuntimeError):
    pass


class Lab:
    """One named lab. Methods are idempotent: `up` on a running lab only adds missing nodes."""

    def __init__(self, name: str = "default", progress: Progress = _stderr):
        if not name.replace("-", "").isalnum() or len(name) > 20:
            raise LabError(f"lab name {name!r}: use up to 20 letters, digits and dashes")
        self.name = name
        self.dir = LAB_ROOT / name
        self.progress = progress
        self.state = self._load()

    # ----- public API -------------------------------------------------------------------
    @property
    def nodes(self) -> list[LabNode]:
        return list(self.state.nodes) if self.state else []

    @property
    def host_address(self) -> str:
        return self._require_state().host_address

    @property
    def bridge(self) -> str:
        return self._require_state().bridge

    @property
    def inventory_path(self) -> Path:
        return self.dir / "inventory.yml"

    @property
    def pool_inventory_path(self) -> Path:
        """The scheduler's inventory: the walle_consul plugin over the lab's Consul (the nodes
        that joined), with the connection settings in group_vars/all.yml beside it."""
        return self.dir / "pool" / "walle_consul.yml"

    @property
    def control_path_dir(self) -> Path:
        return self.dir / "cp"

    @property
    def ssh_key(self) -> Path:
        return self.dir / "id_ed25519"

    def up(self, count: int = 3, vm_nodes: int = 0) -> list[LabNode]:
        """Boot node1..node<count> (nspawn) and, after them, `vm_nodes` VM nodes; nodes
        already running are kept, a recorded node that is down boots again as what it was."""
        if not 1 <= count + vm_nodes <= 50 or count < 0 or vm_nodes < 0:
            raise LabError(f"node count {count} + {vm_nodes} VM node(s): choose 1 to 50 in all")
        if vm_nodes:
            _require_vm_support()
        rootfs = ensure_rootfs(progress=self.progress)
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.state is None:
            self.state = LabState(name=self.name, index=_claim_index(self.name))
            self._save()
        self._ensure_ssh_key()
        self._ensure_bridge()
        started = time.monotonic()
        for n in range(1, count + vm_nodes + 1):
            name = f"node{n}"
            node = self._node(name)
            if node and node.pid and _alive(node.pid):
                continue
            self.progress(f"[{self.name}] booting {name}...")
            vm = node.is_vm if node else n > count  # a recorded node boots as what it was
            if vm:
                self._boot_vm(name)
            else:
                self._boot(name, rootfs)
        self._write_inventory()
        self._wait_for_ssh()
        self.progress(f"[{self.name}] {len(self.state.nodes)} node(s) up in "
                      f"{time.monotonic() - started:.1f}s")
        return self.nodes

    def add(self, count: int = 1, vm: bool = False) -> list[LabNode]:
        """Boot `count` more nodes into the lab (numbered after the highest one; VM nodes
        with `vm`); returns them. Provisioning them (site.yml --limit) is the caller's
        (`walle lab add`)."""
        state = self._require_state()
        if not 1 <= count <= 50 - len(state.nodes):
            raise LabError(f"node count {count}: the lab has {len(state.nodes)} node(s) and "
                           "holds at most 50")
        if vm:
            _require_vm_support()
        rootfs = None if vm else ensure_rootfs(progress=self.progress)
        first = max((_number(n.name) for n in state.nodes), default=0) + 1
        names = [f"node{n}" for n in range(first, first + count)]
        for name in names:
            self.progress(f"[{self.name}] booting {name}{' (VM)' if vm else ''}...")
            if vm:
                self._boot_vm(name)
            else:
                self._boot(name, rootfs)
        self._write_inventory()
        self._wait_for_ssh(only=set(names))
        return [node for node in self.nodes if node.name in names]

    def remove_node(self, name: str) -> None:
        """Power a node off and forget it: container, overlay, files, inventory entry. Draining
        it and making it leave Consul first is the caller's (`walle lab remove`)."""
        node = self._node(name)
        if node is None:
            raise LabError(f"no node {name!r} in lab {self.name!r}")
        self.progress(f"[{self.name}] powering off {name}")
        _stop_node(node)
        shutil.rmtree(self.dir / "nodes" / name, ignore_errors=True)
        state = self._require_state()
        state.nodes = [n for n in state.nodes if n.name != name]
        self._save()
        self._write_inventory()
        # SSH masters of the node would outlive it; a later node may reuse its address
        shutil.rmtree(self.control_path_dir, ignore_errors=True)

    def status(self) -> list[dict]:
        rows = []
        for node in self.nodes:
            up = bool(node.pid) and _alive(node.pid)
            rows.append({"name": node.name, "kind": node.kind, "address": node.address,
                         "pid": node.pid, "running": up,
                         "ssh": up and _port_open(node.address, 22)})
        return rows

    def kill_node(self, name: str) -> None:
        """A hard failure: SIGKILL the node's init (its whole PID namespace dies with it) and its
        nspawn process, as if the machine lost power (a VM node: SIGKILL qemu, its tap device
        removed: the link goes with the machine)."""
        node = self._node(name)
        if node is None:
            raise LabError(f"no node {name!r} in lab {self.name!r}")
        if node.is_vm:
            _stop_vm(node, grace=0.0)
            return
        for pid in (*_children(node.pid), node.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(node.pid, 10.0)

    def restart_node(self, name: str) -> LabNode:
        """Boot a killed node again (same root, same address)."""
        node = self._node(name)
        if node is None:
            raise LabError(f"no node {name!r} in lab {self.name!r}")
        if not _alive(node.pid):
            shutil.rmtree(self.control_path_dir, ignore_errors=True)
            if node.is_vm:
                self._boot_vm(name)  # on its own disk overlay, kept since it was killed
            else:
                self._boot(name, ensure_rootfs(progress=self.progress))
            self._wait_for_ssh(only={name})  # other nodes may be down on purpose
        return self._node(name)

    def process_running(self, key: str) -> bool:
        """Whether the lab daemon `key` (see start_process) runs."""
        pid = self.state.processes.get(key) if self.state else None
        return bool(pid) and _alive(pid)

    def start_process(self, key: str, argv: list[str], log_name: str) -> int:
        """Start a host-side daemon that belongs to this lab (Serf, the Consul stand-in) and
        record its PID so `down()` ends it."""
        state = self._require_state()
        old = state.processes.get(key)
        if old and _alive(old):
            return old
        log = open(self.dir / log_name, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        state.processes[key] = proc.pid
        self._save()
        return proc.pid

    # ----- Consul for the lab: a host Serf agent and the stand-in ----------------------------
    @property
    def consul_http_addr(self) -> str:
        return f"http://{self._require_state().host_address}:{CONSUL_HTTP_PORT}"

    @property
    def consul_dns_addr(self) -> tuple[str, int]:
        return self._require_state().host_address, CONSUL_DNS_PORT

    @property
    def serf_rpc_addr(self) -> str:
        return f"127.0.0.1:{SERF_RPC_BASE + self._require_state().index}"

    def start_consul(self) -> str:
        """Start the lab's membership and Consul API: a Serf agent on the host's bridge address
        (lab nodes join it, see roles/consul) and the Consul stand-in following its members.
        The `default` lab's HTTP API also answers on 127.0.0.1:8500, where Consul's clients
        look first. Returns the HTTP address."""
        state = self._require_state()
        host = state.host_address
        server = f"walle-server-{self.name}"
        self.start_process("serf", [
            "serf", "agent", "-node", server, "-bind", f"{host}:{SERF_PORT}",
            "-rpc-addr", self.serf_rpc_addr, "-tag", "walle_role=server",
            "-log-level", "warn", "-profile", SERF_PROFILE,
        ], "serf.log")
        argv = [sys.executable, "-m", "walle.lab.consul_standin",
                "--data-dir", str(self.dir / "consul"), "--node-name", server,
                "--http", f"{host}:{CONSUL_HTTP_PORT}", "--dns", f"{host}:{CONSUL_DNS_PORT}",
                "--serf-rpc", self.serf_rpc_addr]
        if self.name == "default":
            argv += ["--http", f"127.0.0.1:{CONSUL_HTTP_PORT}"]
        self.start_process("consul-standin", argv, "consul-standin.log")
        _wait_port(host, CONSUL_HTTP_PORT, 20.0, what="the Consul stand-in")
        return self.consul_http_addr

    def down(self) -> None:
        self.state = self._load()  # what is recorded now: another process may have added nodes
        if self.state is None and not self.dir.exists():
            return
        state = self.state
        if state:
            for key, pid in list(state.processes.items()):
                self.progress(f"[{self.name}] stopping {key} (pid {pid})")
                _terminate(pid, 5.0)
            for node in state.nodes:
                self.progress(f"[{self.name}] stopping {node.name}")
                _stop_node(node)
            _run_quiet(["ip", "link", "del", state.bridge])
        shutil.rmtree(self.dir, ignore_errors=True)
        self.state = None
        self.progress(f"[{self.name}] lab removed")

    # ----- internals ----------------------------------------------------------------------
    def _require_state(self) -> LabState:
        if self.state is None:
            raise LabError(f"lab {self.name!r} is not up: run `walle lab up`")
        return self.state

    def _node(self, name: str) -> LabNode | None:
        return next((n for n in self.nodes if n.name == name), None)

    def _load(self) -> LabState | None:
        path = self.dir / "state.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["nodes"] = [LabNode(**n) for n in raw.get("nodes", [])]
        return LabState(**raw)

    def _save(self) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(self.dir / "state.json")

    def _ensure_ssh_key(self) -> None:
        if not self.ssh_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            f"walle-lab-{self.name}", "-f", str(self.ssh_key)], check=True)

    def _ensure_bridge(self) -> None:
        state = self._require_state()
        if not Path(f"/sys/class/net/{state.bridge}").exists():
            subprocess.run(["ip", "link", "add", state.bridge, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", f"{state.host_address}/24", "dev",
                            state.bridge], check=True)
        subprocess.run(["ip", "link", "set", state.bridge, "up"], check=True)

    def _boot(self, name: str, rootfs: Path) -> None:
        state = self._require_state()
        address = f"{SUBNET_PREFIX}.{state.index}.{FIRST_NODE_HOST + _number(name) - 1}"
        node_dir = self.dir / "nodes" / name
        root = node_dir / "root"
        _mount_overlay(rootfs, node_dir)
        _configure_node(root, name, address, state.host_address,
                        self.ssh_key.with_suffix(".pub").read_text())
        # Short machine names keep nspawn's host-side veth predictably "vb-<machine>" (at most
        # 15 characters); a killed node's veth can outlive it briefly and block a reboot.
        machine = f"w{state.index}-{name}"
        _run_quiet(["ip", "link", "del", f"vb-{machine}"])
        log = open(node_dir / "console.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", str(root),
             "-M", machine, "--hostname", name, "--boot",
             f"--network-bridge={state.bridge}", "--console=read-only"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        node = LabNode(name=name, address=address, pid=proc.pid, root=str(root))
        state.nodes = [n for n in state.nodes if n.name != name] + [node]
        state.nodes.sort(key=lambda n: _number(n.name))
        self._save()

    def _boot_vm(self, name: str) -> None:
        """Boot a VM node: a copy-on-write disk over the cached VM image (kept across a kill
        and restart, like a machine's disk), a tap device on the lab bridge, qemu."""
        state = self._require_state()
        number = _number(name)
        address = f"{SUBNET_PREFIX}.{state.index}.{FIRST_NODE_HOST + number - 1}"
        image = walle_vm.ensure_vm_image(progress=self.progress)
        node_dir = self.dir / "nodes" / name
        node_dir.mkdir(parents=True, exist_ok=True)
        disk = node_dir / "disk.qcow2"
        if not disk.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                            str(image.disk), str(disk)], check=True, timeout=60)
        tap = f"wt{state.index}v{number}"  # at most 15 characters (index < 200, number <= 50)
        _run_quiet(["ip", "link", "del", tap])  # a killed node's, should one be left
        subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
        subprocess.run(["ip", "link", "set", tap, "master", state.bridge, "up"], check=True)
        identity = walle_vm.LabIdentity(name=name, address=address, host=state.host_address,
                                        ssh_public_key=self.ssh_key.with_suffix(".pub")
                                        .read_text())
        argv = walle_vm.lab_qemu_argv(image, disk, node_dir / "console.log", tap,
                                      f"52:54:00:77:{state.index:02x}:{number:02x}",
                                      identity, VM_MEMORY_MB)
        with open(node_dir / "qemu.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node = LabNode(name=name, address=address, pid=proc.pid, kind="vm", tap=tap)
        state.nodes = [n for n in state.nodes if n.name != name] + [node]
        state.nodes.sort(key=lambda n: _number(n.name))
        self._save()

    def _wait_for_ssh(self, only: set[str] | None = None) -> None:
        """Wait for sshd on the nodes just booted (`only`, default all of them): BOOT_TIMEOUT,
        or the VM tier's boot timeout when a VM node is among them (tcg is slow)."""
        pending = {n.name: n for n in self.nodes if only is None or n.name in only}
        timeout = max([BOOT_TIMEOUT] + [walle_vm.BOOT_TIMEOUT for n in pending.values()
                                        if n.is_vm])
        started = time.monotonic()
        deadline = started + timeout
        while pending and time.monotonic() < deadline:
            for name, node in list(pending.items()):
                if not _alive(node.pid):
                    log = self.dir / "nodes" / name / "console.log"
                    raise LabError(f"{name} exited while booting; see {log}:\n"
                                   f"{_tail(log) if node.is_vm else ''}")
                if _port_open(node.address, 22):
                    if node.is_vm:
                        self.progress(f"[{self.name}] {name} (VM) answers on SSH after "
                                      f"{time.monotonic() - started:.1f}s")
                    del pending[name]
            time.sleep(0.2)
        if pending:
            consoles = "".join(
                f"\n{name} console:\n{_tail(self.dir / 'nodes' / name / 'console.log')}"
                for name, node in sorted(pending.items()) if node.is_vm)
            raise LabError(f"sshd did not answer within {timeout:.0f}s on: "
                           f"{', '.join(sorted(pending))}{consoles}")

    def _connection_vars(self) -> dict:
        return {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.ssh_key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                       "-o UserKnownHostsFile=/dev/null",
            "ansible_python_interpreter": "/usr/bin/python3",
            # Per-lab SSH masters: a new lab (or a rebooted node) reusing an address
            # must never talk through a master connected to a dead container.
            "ansible_control_path_dir": str(self.control_path_dir),
        }

    def _write_inventory(self) -> None:
        """Two inventories: the static list site.yml provisions (inventory.yml, the nodes
        booted here), and the scheduler's pool, which is whatever Consul's catalog lists
        (pool/walle_consul.yml: no node names in it, so it never changes)."""
        hosts = {n.name: {**_node_vars(n), **(VM_CONNECTION_VARS if n.is_vm else {})}
                 for n in self.nodes}
        inventory = {
            "all": {
                "vars": {
                    **self._connection_vars(),
                    "walle_lab": self.name,
                    "walle_lab_host_address": self._require_state().host_address,
                    # roles/consul in lab mode: Serf on every node, the stand-in on the host
                    "consul_mode": "standin",
                    "consul_serf_join": [self._require_state().host_address],
                    "consul_standin_http_addr": self.consul_http_addr,
                },
                "children": {"walle_nodes": {"hosts": hosts}},
            }
        }
        self.inventory_path.write_text(yaml.safe_dump(inventory, sort_keys=False))
        (self.dir / "inventory.json").write_text(json.dumps(inventory, indent=2))
        pool = self.pool_inventory_path
        (pool.parent / "group_vars").mkdir(parents=True, exist_ok=True)
        pool.write_text(yaml.safe_dump({"plugin": "walle_consul",
                                        "url": self.consul_http_addr}, sort_keys=False))
        (pool.parent / "group_vars" / "all.yml").write_text(
            yaml.safe_dump(self._connection_vars(), sort_keys=False))
        host_vars = pool.parent / "host_vars"  # the scheduler's connection to VM nodes
        shutil.rmtree(host_vars, ignore_errors=True)
        vms = [n for n in self.nodes if n.is_vm]
        if vms:
            host_vars.mkdir()
            for node in vms:
                (host_vars / f"{node.name}.yml").write_text(
                    yaml.safe_dump(VM_CONNECTION_VARS, sort_keys=False))


def _node_vars(node: LabNode) -> dict:
    """Inventory variables of a lab node: three zones round-robin, racks of three, so spread
    and failure-domain placement have something to work with."""
    number = _number(node.name)
    return {
        "ansible_host": node.address,
        "walle_node_address": node.address,
        "walle_node_zone": f"z{(number - 1) % 3 + 1}",
        "walle_node_rack": f"r{(number - 1) // 3 + 1}",
    }


def _number(name: str) -> int:
    return int(name.removeprefix("node"))


# ----- node preparation -------------------------------------------------------------------
def _mount_overlay(rootfs: Path, node_dir: Path) -> None:
    root, upper, work = node_dir / "root", node_dir / "upper", node_dir / "work"
    for d in (root, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(root):
        return
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={rootfs},upperdir={upper},workdir={work}", str(root)],
                   check=True)


def _configure_node(root: Path, name: str, address: str, host: str, pubkey: str) -> None:
    (root / "etc/hostname").write_text(name + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{address} {name}\n{host} walle-host\n")
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(pubkey)
    (ssh / "authorized_keys").chmod(0o600)
    network = root / "etc/systemd/network/10-walle-lab.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_text(f"[Match]\nName=host0\n\n[Network]\nAddress={address}/24\n"
                       "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "systemd-networkd.service"
    if not link.is_symlink():
        link.symlink_to("/lib/systemd/system/systemd-networkd.service")


# ----- process, mount and network helpers ---------------------------------------------------
def _claim_index(name: str) -> int:
    """Pick the smallest free subnet index, under a lock so concurrent labs never share one."""
    LAB_ROOT.mkdir(parents=True, exist_ok=True)
    with open(LAB_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        used = set()
        for state in LAB_ROOT.glob("*/state.json"):
            with contextlib.suppress(ValueError, KeyError):
                used.add(json.loads(state.read_text())["index"])
        for claim in LAB_ROOT.glob("*/.index"):
            if claim.parent.name != name:
                with contextlib.suppress(ValueError):
                    used.add(int(claim.read_text()))
        index = next((i for i in range(MAX_LABS) if i not in used), None)
        if index is None:
            raise LabError(f"all {MAX_LABS} lab subnets are in use: remove old labs")
        (LAB_ROOT / name).mkdir(parents=True, exist_ok=True)
        (LAB_ROOT / name / ".index").write_text(str(index))
        return index


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            return True
        time.sleep(0.1)
    return False


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)


def _stop_container(pid: int) -> None:
    """SIGTERM to nspawn shuts the container down cleanly; kill it if that hangs."""
    if not pid or not _alive(pid):
        return
    inits = _children(pid)
    _terminate(pid, 15.0)
    for child in inits:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _stop_node(node: LabNode) -> None:
    if node.is_vm:
        _stop_vm(node, grace=10.0)
    else:
        _stop_container(node.pid)
        _unmount(node.root)


def _stop_vm(node: LabNode, grace: float) -> None:
    """End qemu by its PID (SIGTERM: qemu exits at once, like a power cut; SIGKILL after
    `grace`, at once when 0) and remove its tap device. The disk overlay stays with the node's
    folder (a restart boots from it)."""
    if node.pid and _alive(node.pid):
        if grace > 0:
            _terminate(node.pid, grace)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)
            _wait_gone(node.pid, 10.0)
    if node.tap:
        _run_quiet(["ip", "link", "del", node.tap])


def _require_vm_support() -> None:
    reason = walle_vm.qemu_available()
    if reason:
        raise LabError(f"VM nodes need qemu: {reason}")
    if not Path("/dev/net/tun").exists():
        raise LabError("VM nodes need /dev/net/tun (tap devices on the lab bridge)")


def _unmount(root: str) -> None:
    if not (root and os.path.ismount(root)):
        return
    if subprocess.run(["umount", root], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", root], capture_output=True)


def _run_quiet(argv: list[str]) -> None:
    subprocess.run(argv, capture_output=True)


def _wait_port(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return
        time.sleep(0.1)
    raise LabError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")


def _port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout):
        return True
    return False


@contextlib.contextmanager
def temporary_lab(name: str, count: int = 3, progress: Progress = _stderr,
                  vm_nodes: int = 0) -> Iterator[Lab]:
    lab = Lab(name, progress=progress)
    try:
        lab.up(count, vm_nodes=vm_nodes)
        yield lab
    finally:
        lab.down()
