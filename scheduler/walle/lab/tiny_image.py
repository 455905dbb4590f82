"""A tiny machine image for the nspawn runtime (lab and tests only): the named programs and
their libraries copied from the machine that runs the script, so no download is needed.
Used inside the VM by the vm tier and on the host by `walle image build` tests."""

from __future__ import annotations

import subprocess

# Copied, not bind-mounted: the user namespace maps the image's ownership for the container.
# Usage: sh -c SCRIPT tiny-image ROOT /usr/bin/PROGRAM...
TINY_IMAGE_SCRIPT = """set -e
root=$1; shift
rm -rf "$root"; mkdir -p "$root"/usr/bin "$root"/usr/lib "$root"/usr/lib64 "$root"/etc
for d in bin lib lib64 sbin; do ln -sfn usr/$d "$root/$d"; done
for d in proc sys dev run tmp var; do mkdir -p "$root/$d"; done
cp /etc/os-release "$root"/etc/
cp /usr/bin/dash "$@" "$root"/usr/bin/
ln -sfn dash "$root"/usr/bin/sh
libs=$(ldd /usr/bin/dash "$@" | grep -o '/[^ ]*' | grep -v ':$')
for lib in $(echo "$libs" | sort -u); do
  cp -L --parents "$lib" "$root"/
done
"""


def make_tiny_tree(root: str, programs: list[str]) -> None:
    """Write the tiny image's tree at root, here (root is replaced)."""
    subprocess.run(["sh", "-c", TINY_IMAGE_SCRIPT, "tiny-image", root, *programs],
                   check=True, capture_output=True, timeout=120)
