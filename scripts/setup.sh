#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root) to develop, test and run the Walle lab:
# Debian packages, the Python virtual environment, and the cached lab rootfs.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(systemd-container debootstrap serf qemu-system-x86 dnsutils iproute2 openssh-client
          e2fsprogs qemu-utils python3-venv prometheus chromium haproxy)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Every lab node is a booted systemd, and each systemd takes several inotify instances: with a
# few labs side by side (tests, `walle demo`) the kernel's default of 128 per user runs out
# and nodes fail to boot ("Failed to allocate manager object"). Raised now and at every boot.
INOTIFY_INSTANCES=1024
if (( $(cat /proc/sys/fs/inotify/max_user_instances) < INOTIFY_INSTANCES )); then
  echo "setup: fs.inotify.max_user_instances=$INOTIFY_INSTANCES (lab nodes run systemd)" >&2
  sysctl -q -w fs.inotify.max_user_instances=$INOTIFY_INSTANCES
  echo "fs.inotify.max_user_instances = $INOTIFY_INSTANCES" > /etc/sysctl.d/60-walle-lab.conf
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'

# ansible.cfg finds the walle.pool collection (this repository) through this link
.venv/bin/python -m walle.collection >/dev/null
echo "setup: preparing the lab rootfs (cached in /var/cache/walle)" >&2
.venv/bin/python -m walle.lab.rootfs >/dev/null
echo "setup: done" >&2
