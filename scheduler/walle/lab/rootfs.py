"""The cached Debian root filesystem that lab nodes and test VMs boot from.

Built once with debootstrap (about 2 minutes), keyed by suite and package list, and reused:
every node gets its own copy-on-write view of it (see `walle.lab.nodes`). The build goes to a
temporary folder renamed into place at the end, under a lock, so an interrupted or concurrent
build never leaves a half-made cache behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CACHE_DIR = Path(os.environ.get("WALLE_CACHE_DIR", "/var/cache/walle"))
SUITE = "bookworm"
NODE_PACKAGES: tuple[str, ...] = (
    "systemd", "systemd-sysv", "dbus", "iproute2", "python3", "python3-psutil",
    "openssh-server", "serf", "systemd-container", "procps", "curl", "iputils-ping",
    "ca-certificates", "libpam-systemd",
    # roles/exporter and roles/monitoring (lab nodes have no route to a mirror)
    "python3-prometheus-client", "prometheus-node-exporter", "prometheus",
    # roles/lb (HAProxy on the nodes of the `lb` group)
    "haproxy",
)


def cache_key(suite: str, packages: Sequence[str]) -> str:
    raw = suite + "\n" + "\n".join(sorted(packages))
    return f"{suite}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def ensure_rootfs(packages: Sequence[str] = NODE_PACKAGES, suite: str = SUITE,
                  progress=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Return the path of a ready rootfs with `packages`, building it if needed."""
    target = CACHE_DIR / "rootfs" / cache_key(suite, packages)
    if (target / ".walle-complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".walle-complete").exists():
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        progress(f"building the {suite} rootfs in {target} (debootstrap, about 2 minutes)...")
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
             suite, str(partial)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        _prepare(partial)
        (partial / ".walle-complete").write_text(cache_key(suite, packages) + "\n")
        partial.rename(target)
        progress("rootfs ready")
    return target


def _prepare(root: Path) -> None:
    """Make the image boot quietly as a headless node: no getty, no apt timers, sshd with
    keys generated per node at first boot, a clean machine-id so each copy gets its own."""
    for unit in ("getty@tty1.service", "console-getty.service", "apt-daily.timer",
                 "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
        mask = root / "etc/systemd/system" / unit
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")
    (root / "etc/machine-id").write_text("")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/walle.conf").write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
    )
    keygen = root / "etc/systemd/system/walle-sshd-keygen.service"
    keygen.write_text(
        "[Unit]\nDescription=Generate SSH host keys for this node\nBefore=ssh.service\n"
        "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n"
        "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / keygen.name
    if not link.exists():
        link.symlink_to(f"/etc/systemd/system/{keygen.name}")
    # serf is started by the consul role with the node's own config, and Prometheus and its
    # node exporter by roles/monitoring and roles/exporter, HAProxy by roles/lb, not by their
    # packages
    for unit in ("serf.service", "prometheus.service", "prometheus-node-exporter.service",
                 "haproxy.service"):
        (wants / unit).unlink(missing_ok=True)


if __name__ == "__main__":
    print(ensure_rootfs())
