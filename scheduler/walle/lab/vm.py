"""A throw-away qemu VM with a real kernel and full cgroup v2, for enforcement tests.

The host's kernel has no cgroup v2 cpu/memory/io controllers (see machines.md), so the lab's
nspawn nodes cannot show what the kernel enforces. This module builds, once, a VM disk image
from the cached lab rootfs plus a Debian cloud kernel, caches it under
`/var/cache/walle/vm/<key>/`, and boots it under qemu (tcg: nested KVM does not work here) with
a copy-on-write overlay per boot, so the cached image stays clean.

    with booted_vm() as vm:
        vm.run("cat /sys/fs/cgroup/cgroup.controllers").stdout
        # Ansible: -i vm.inventory_path

Every wait is bounded; qemu is ended by its PID (poweroff first, SIGKILL after a bound) and the
per-boot overlay is removed, even when the body raises.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from walle.lab.rootfs import CACHE_DIR, NODE_PACKAGES, SUITE, cache_key, ensure_rootfs

VM_CACHE = CACHE_DIR / "vm"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
# Debian packages added to the lab rootfs for the VM: the kernel, and `lxc` (5.0) so a VM node
# can run the lxc runtime (walle_workload runtime=lxc; walle_facts labels it runtime_lxc).
VM_PACKAGES = (KERNEL_PACKAGE, "lxc")
# lxc's own services, masked: Walle starts each container as its instance's unit, on the
# node's network; it needs neither autostart (lxc.service) nor the lxcbr0 bridge with its
# dnsmasq (lxc-net.service), which would only cost boot time under tcg.
LXC_UNITS_MASKED = ("lxc.service", "lxc-net.service", "lxc-monitord.service")
# Bump when the recipe (VM_PACKAGES, _customize) changes, so a stale cached image is not reused.
# 2: the lab identity unit (a lab VM node's address and SSH key from the kernel command line)
# 3: and Debian lxc
RECIPE_VERSION = "3"
DISK_SIZE = "2G"
# no_timer_check: under tcg on a loaded host the kernel's IO-APIC timer check can miss its
# ticks and panic ("IO-APIC + timer doesn't work!"), seen here at load 20+.
KERNEL_CMDLINE = (
    "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 "
    "systemd.show_status=0 quiet no_timer_check"
)
QEMU = "qemu-system-x86_64"
# tcg boots in about 30 s on an idle machine; the host is shared (WALLE_VM_BOOT_TIMEOUT: more)
BOOT_TIMEOUT = float(os.environ.get("WALLE_VM_BOOT_TIMEOUT", "240"))
SHUTDOWN_TIMEOUT = 30.0
# ConnectTimeout covers sshd's banner and key exchange, which a starved tcg guest on a busy
# host took more than 5 s to answer (every vm test failed "during banner exchange" at load 5
# with the lab tier and a second VM beside it).
SSH_OPTIONS = (
    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=30", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
)

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


class VmError(RuntimeError):
    """The VM could not be built, booted or reached; the message says which and why."""


@dataclass(frozen=True)
class VmImage:
    disk: Path  # raw ext4 image of the root filesystem (never written after the build)
    kernel: Path
    initrd: Path
    key: Path  # root's SSH private key; the public half is in the image


@dataclass
class VM:
    ssh_port: int
    inventory_path: Path
    key: Path
    pid: int  # of qemu
    workdir: Path  # overlay, console log, inventory; removed at shutdown
    boot_seconds: float  # qemu start -> sshd answering

    def ssh_argv(self, command: str) -> list[str]:
        return ssh_argv(self.ssh_port, self.key, command)

    def run(self, command: str, timeout: float = 60.0,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the VM as root; stdout/stderr are captured as text."""
        proc = subprocess.run(self.ssh_argv(command), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise VmError(f"in the VM, `{command}` exited {proc.returncode}: "
                          f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write `text` to `path` in the VM (over SSH's stdin: no quoting of the content)."""
        quoted = shlex.quote(path)
        proc = subprocess.run(self.ssh_argv(f"cat > {quoted} && chmod {mode:o} {quoted}"),
                              input=text, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise VmError(f"writing {path} in the VM failed: {proc.stderr.strip()}")

    def consoletail(self, lines: int = 40) -> str:
        return tail(self.workdir / "console.log", lines)


# ---- pure helpers ---------------------------------------------------------------------------

def image_key(rootfs: Path, kernel_package: str = KERNEL_PACKAGE,
              recipe: str = RECIPE_VERSION) -> str:
    raw = f"{rootfs.name}\n{kernel_package}\n{recipe}"
    return f"{rootfs.name}-{hashlib.sha256(raw.encode()).hexdigest()[:10]}"


def qemu_argv(image: VmImage, overlay: Path, ssh_port: int, console: Path,
              memory_mb: int = 1024, cpus: int = 2) -> list[str]:
    """The test VM: user-mode networking, sshd forwarded to 127.0.0.1:`ssh_port`."""
    return _qemu_base(image, overlay, console, memory_mb, cpus, KERNEL_CMDLINE) + [
        "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
    ]


def lab_qemu_argv(image: VmImage, overlay: Path, console: Path, tap: str, mac: str,
                  identity: LabIdentity, memory_mb: int, cpus: int = 2) -> list[str]:
    """A lab VM node: its NIC on the tap device `tap` (a port of the lab's bridge), its lab
    identity on the kernel command line (read by walle-lab-identity in the guest). It
    reboots in place (no -no-reboot): `reboot` inside is a reboot, as on a machine."""
    argv = _qemu_base(image, overlay, console, memory_mb, cpus,
                      f"{KERNEL_CMDLINE} {identity.cmdline()}")
    argv.remove("-no-reboot")
    return argv + [
        "-netdev", f"tap,id=lab,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=lab,mac={mac}",
    ]


def _qemu_base(image: VmImage, overlay: Path, console: Path, memory_mb: int, cpus: int,
               cmdline: str) -> list[str]:
    return [
        QEMU, "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb), "-smp", str(cpus),
        "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
        "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", cmdline,
        "-drive", f"file={overlay},format=qcow2,if=virtio",
    ]


@dataclass(frozen=True)
class LabIdentity:
    """What makes a VM a given lab node, passed on its kernel command line: its name, its
    address on the lab bridge (/24), the host's address there, and the lab's SSH public key
    (root logs in with it, as on the lab's nspawn nodes)."""

    name: str
    address: str
    host: str
    ssh_public_key: str  # "ssh-ed25519 AAAA... comment"

    def cmdline(self) -> str:
        for what, value in (("address", self.address), ("host", self.host)):
            if not _is_ipv4(value):
                raise VmError(f"lab VM node {self.name}: {what} {value!r} is not an IPv4 "
                              "address")
        if not (self.name.isascii() and self.name.replace("-", "").isalnum()):
            raise VmError(f"lab VM node name {self.name!r}: use letters, digits and dashes")
        words = self.ssh_public_key.split()
        if len(words) < 2 or not words[0].startswith("ssh-") or not all(
                c.isalnum() or c in "+/=" for c in words[1]):
            raise VmError(f"lab VM node {self.name}: the lab's SSH public key is not "
                          "'ssh-TYPE BASE64 [comment]'")
        return (f"systemd.hostname={self.name} walle.address={self.address}/24 "
                f"walle.host={self.host} walle.ssh_key={words[0]},{words[1]}")


def _is_ipv4(value: str) -> bool:
    parts = value.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


def ssh_argv(port: int, key: Path, command: str) -> list[str]:
    return ["ssh", *SSH_OPTIONS, "-i", str(key), "-p", str(port), "root@127.0.0.1", command]


def inventory_text(port: int, key: Path, host: str = "walle-vm") -> str:
    """An INI inventory with one host, `host`, in group `vm` (Ansible adds its own BatchMode)."""
    common = " ".join(f"-o {opt}" for opt in SSH_OPTIONS[1::2] if not opt.startswith("Batch"))
    return (
        "[vm]\n"
        f"{host} ansible_host=127.0.0.1 ansible_port={port} ansible_user=root "
        f"ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_common_args='{common}'\n"
    )


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file (a console log), or a note that there is none."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console log)"


# ---- image build (cached) ------------------------------------------------------------------

def vm_image_cached() -> bool:
    """Whether the image for the cached lab rootfs is built (a rootfs build is not started)."""
    return (VM_CACHE / image_key(CACHE_DIR / "rootfs" / cache_key(SUITE, NODE_PACKAGES))
            / ".walle-complete").exists()


def ensure_vm_image(progress: Progress = _stderr) -> VmImage:
    """Return the cached VM image, building it first if needed (about 2 minutes, as root)."""
    rootfs = ensure_rootfs(progress=progress)
    target = VM_CACHE / image_key(rootfs)
    if (target / ".walle-complete").exists():
        return _image_in(target)
    if os.geteuid() != 0:
        raise VmError(f"building the VM image in {target} needs root (mkfs.ext4 -d keeps "
                      "file owners only as root); run once as root to cache it")
    VM_CACHE.mkdir(parents=True, exist_ok=True)
    with open(VM_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".walle-complete").exists():
            _build(rootfs, target, progress)
    return _image_in(target)


def _image_in(folder: Path) -> VmImage:
    return VmImage(disk=folder / "disk.img", kernel=folder / "vmlinuz",
                   initrd=folder / "initrd.img", key=folder / "id_ed25519")


def _build(rootfs: Path, target: Path, progress: Progress) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tree = partial / "tree"
    try:
        progress(f"building the VM image in {target} (kernel and lxc install, about 2 minutes)...")
        subprocess.run(["cp", "-a", f"{rootfs}/.", str(tree)], check=True)
        _install_packages(tree)
        key = partial / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "walle-vm",
                        "-f", str(key)], check=True)
        _customize(tree, key.with_suffix(".pub").read_text())
        _copy_boot_files(tree, partial)
        disk = partial / "disk.img"
        subprocess.run(["truncate", "-s", DISK_SIZE, str(disk)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "walle-vm", "-d", str(tree), str(disk)],
                       check=True)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    (partial / ".walle-complete").write_text(target.name + "\n")
    partial.rename(target)
    progress("VM image ready")


def _install_packages(tree: Path) -> None:
    script = (
        "export DEBIAN_FRONTEND=noninteractive && apt-get update -q && "
        f"apt-get install -y -q --no-install-recommends {' '.join(VM_PACKAGES)} && "
        "apt-get clean"
    )
    subprocess.run(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(tree),
                    "/bin/sh", "-c", script],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    for unit in LXC_UNITS_MASKED:
        _mask(tree, unit)


# A lab VM node's identity from its kernel command line (LabIdentity.cmdline): its static
# address on the lab bridge (a networkd file in /run sorting before the DHCP one), /etc/hosts
# and /etc/hostname, and the lab's SSH key for root (authorized_keys2, rewritten each boot).
LAB_IDENTITY_SCRIPT = r"""#!/bin/sh
set -eu
name= address= host= key=
for word in $(cat /proc/cmdline); do
    case "$word" in
        systemd.hostname=*) name=${word#systemd.hostname=} ;;
        walle.address=*) address=${word#walle.address=} ;;
        walle.host=*) host=${word#walle.host=} ;;
        walle.ssh_key=*) key=${word#walle.ssh_key=} ;;
    esac
done
if [ -z "$name" ] || [ -z "$address" ] || [ -z "$host" ] || [ -z "$key" ]; then
    echo "walle-lab-identity: the kernel command line lacks systemd.hostname=, walle.address=," \
         "walle.host= or walle.ssh_key=" >&2
    exit 1
fi
mkdir -p /run/systemd/network
printf '[Match]\nName=e*\n\n[Network]\nAddress=%s\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
    "$address" > /run/systemd/network/10-walle-lab.network
printf '%s\n' "$name" > /etc/hostname
printf '127.0.0.1 localhost\n%s %s\n%s walle-host\n' "${address%/*}" "$name" "$host" > /etc/hosts
printf '%s %s\n' "${key%%,*}" "${key#*,}" > /root/.ssh/authorized_keys2
chmod 600 /root/.ssh/authorized_keys2
"""
LAB_IDENTITY_UNIT = """[Unit]
Description=Walle lab node identity (address, hosts, SSH key) from the kernel command line
ConditionKernelCommandLine=walle.address
DefaultDependencies=no
After=systemd-remount-fs.service local-fs.target
Before=sysinit.target network-pre.target systemd-networkd.service ssh.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/walle-lab-identity

[Install]
WantedBy=sysinit.target
"""


def _customize(tree: Path, public_key: str) -> None:
    """DHCP on the NIC (unless booted as a lab node: walle-lab-identity), root's key, host
    keys made now (keygen under tcg is slow), no wait-online so boot does not stall, and a
    hostname."""
    network = tree / "etc/systemd/network/20-walle-dhcp.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_text("[Match]\nName=e*\nKernelCommandLine=!walle.address\n\n"
                       "[Network]\nDHCP=yes\n")
    _enable(tree, "systemd-networkd.service", "/lib/systemd/system/systemd-networkd.service")
    script = tree / "usr/local/sbin/walle-lab-identity"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(LAB_IDENTITY_SCRIPT)
    script.chmod(0o755)
    (tree / "etc/systemd/system/walle-lab-identity.service").write_text(LAB_IDENTITY_UNIT)
    _enable(tree, "walle-lab-identity.service",
            "/etc/systemd/system/walle-lab-identity.service", target="sysinit.target")
    _mask(tree, "systemd-networkd-wait-online.service")
    ssh_dir = tree / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(public_key)
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    subprocess.run(["ssh-keygen", "-A", "-f", str(tree)], check=True,
                   stdout=subprocess.DEVNULL)
    (tree / "etc/hostname").write_text("walle-vm\n")
    (tree / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 walle-vm\n")
    (tree / "etc/fstab").write_text("/dev/vda / ext4 rw,relatime 0 1\n")


def _enable(tree: Path, unit: str, source: str, target: str = "multi-user.target") -> None:
    wants = tree / f"etc/systemd/system/{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    link.unlink(missing_ok=True)
    link.symlink_to(source)


def _mask(tree: Path, unit: str) -> None:
    mask = tree / "etc/systemd/system" / unit
    mask.unlink(missing_ok=True)
    mask.symlink_to("/dev/null")


def _copy_boot_files(tree: Path, dest: Path) -> None:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    initrds = sorted((tree / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise VmError(f"expected one kernel and one initrd in {tree}/boot after installing "
                      f"{KERNEL_PACKAGE}, found {kernels} and {initrds}")
    shutil.copy2(kernels[0], dest / "vmlinuz")
    shutil.copy2(initrds[0], dest / "initrd.img")


# ---- boot and shutdown ---------------------------------------------------------------------

def qemu_available() -> str | None:
    """None when qemu can run here, else the reason it cannot (for a test skip message)."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian package qemu-system-x86)"
    if shutil.which("qemu-img") is None:
        return "qemu-img is not installed (Debian package qemu-utils)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def booted_vm(memory_mb: int = 1024, cpus: int = 2, boot_timeout: float = BOOT_TIMEOUT,
              progress: Progress = _stderr) -> Iterator[VM]:
    """Boot a fresh VM from the cached image; yield it once sshd answers; always end it."""
    image = ensure_vm_image(progress=progress)
    workdir = Path(tempfile.mkdtemp(prefix="walle-vm-"))
    proc: subprocess.Popen | None = None
    try:
        overlay = workdir / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                        "-b", str(image.disk), str(overlay)], check=True)
        port = free_port()
        console = workdir / "console.log"
        started = time.monotonic()
        with open(workdir / "qemu.err", "w") as qemu_err:
            proc = subprocess.Popen(qemu_argv(image, overlay, port, console, memory_mb, cpus),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=qemu_err)
        inventory = workdir / "inventory.ini"
        inventory.write_text(inventory_text(port, image.key))
        vm = VM(ssh_port=port, inventory_path=inventory, key=image.key, pid=proc.pid,
                workdir=workdir, boot_seconds=0.0)
        _wait_for_ssh(vm, proc, started + boot_timeout)
        vm.boot_seconds = time.monotonic() - started
        progress(f"VM up in {vm.boot_seconds:.1f} s (ssh on 127.0.0.1:{port}, qemu pid "
                 f"{proc.pid})")
        yield vm
    finally:
        if proc is not None:
            _shutdown(proc, port, image.key)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_for_ssh(vm: VM, proc: subprocess.Popen, deadline: float) -> None:
    for _ in range(1000):  # bounded by count as well as by the deadline
        if proc.poll() is not None:
            raise VmError(f"qemu exited with {proc.returncode} before sshd answered:\n"
                          f"{tail(vm.workdir / 'qemu.err', 20)}\n{vm.consoletail()}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            if vm.run("true", timeout=min(15.0, max(remaining, 1.0))).returncode == 0:
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1.0)
    raise VmError(f"sshd in the VM did not answer within the boot timeout; console:\n"
                  f"{vm.consoletail()}")


def _shutdown(proc: subprocess.Popen, port: int, key: Path) -> None:
    """poweroff over ssh, then SIGKILL qemu by PID if it has not exited within the bound."""
    if proc.poll() is None:
        with suppress(subprocess.TimeoutExpired):
            subprocess.run(ssh_argv(port, key, "systemctl poweroff --no-block"),
                           capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


if __name__ == "__main__":
    with booted_vm() as _vm:
        print(_vm.run("uname -r; nproc; cat /sys/fs/cgroup/cgroup.controllers").stdout)
        print(f"boot: {_vm.boot_seconds:.1f} s")
