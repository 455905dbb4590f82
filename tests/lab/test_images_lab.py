"""Images on a lab node through the real place.yml (docs/images.md): the archive is fetched
from the control side's store only when the node's cache lacks it, verified, unpacked once
into /var/lib/walle/images/sha256-<hex> and shared; a corrupted archive is refused with
nothing unpacked and nothing started.

Lab nodes are nspawn containers on a hybrid-cgroup host: the nested container runs there, but
its limits are not enforced; the vm tier (tests/vm/test_sandbox.py) runs an image with real
cgroup v2.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_executor_lab import on_node

from walle import naming
from walle.adapters.runner import run_playbook
from walle.core.model import Grant
from walle.images import ImageStore, archive
from walle.jobspec import parse_spec
from walle.lab.tiny_image import make_tiny_tree
from walle.service.params import image_args, instance_vars, stop_vars

pytestmark = pytest.mark.lab
MIB = 1024**2
GRANT = Grant(cpu_weight=10, cpu_quota_percent=50, memory_min=0, memory_high=None,
              memory_max=64 * MIB)
CACHE = "var/lib/walle/images"


def box(name: str, image: str):
    return parse_spec({"name": name, "kind": "service",
                       "resources": {"cpu": 0.1, "memory": "64M"},
                       "runtime": {"type": "nspawn", "image": image, "command": "/usr/bin/sleep",
                                   "args": ["600"]}})


def place(lab, node, store: ImageStore, *specs, **extra):
    instances = []
    for spec in specs:
        manifest = store.resolve(spec.runtime.image)
        image = image_args(manifest.digest, str(store.blob_path(manifest.digest)))
        instances.append(instance_vars(spec, 0, node.address, GRANT, image=image))
    return run_playbook("place.yml", str(lab.inventory_path),
                        {"walle_batch": {node.name: instances}, "walle_register": False,
                         **extra}, [node.name], timeout=300)


def stop(lab, node, *jobs: str):
    run_playbook("stop.yml", str(lab.inventory_path),
                 {"walle_batch": {node.name: [stop_vars(j, 0) for j in jobs]},
                  "walle_register": False}, [node.name], timeout=120)


def node_words(lab, node, command: str) -> list[str]:
    """The words a shell command prints on the node (ansible -o prints newlines as \\n)."""
    out = on_node(lab, node.name, command)
    return out.split("(stdout)", 1)[-1].replace("\\n", " ").split()


def missing_or_changed(tree: Path, cached: Path) -> list[str]:
    """What of the image's tree the cache lacks or holds differently, links compared as
    links. (What a running container added to the shared tree is not counted.)"""
    out = subprocess.run(["diff", "-r", "--no-dereference", str(tree), str(cached)],
                         capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines()
            if not line.startswith(f"Only in {cached}")]


def test_an_image_is_fetched_verified_and_unpacked_once(lab, tmp_path):
    node = lab.nodes[0]
    tree = tmp_path / "tiny"
    make_tiny_tree(str(tree), ["/usr/bin/tail", "/usr/bin/sleep"])
    store = ImageStore(tmp_path / "store")
    manifest = store.build("tiny:1.0", tree)
    cached = Path(node.root) / CACHE / archive.cache_dir_name(manifest.digest)
    try:
        first = place(lab, node, store, box("imga", "tiny:1.0"))
        assert first.status == "successful", first.output_tail[-3000:]
        # the verified tree is in the node's cache, the archive is gone
        assert first.hosts[node.name].failed_instances == {}
        assert missing_or_changed(tree, cached) == []
        assert list((Path(node.root) / CACHE / ".incoming").iterdir()) == []
        unit = naming.service_unit("imga", 0)
        text = (Path(node.root) / "etc/systemd/system" / unit).read_text()
        assert f"/var/lib/walle/images/{cached.name}" in text
        # the container runs its command from the image (nested nspawn works on lab nodes)
        out = node_words(lab, node, f"systemctl is-active {unit}; "
                                    "pgrep -cfx '/usr/bin/sleep 600'")
        assert out == ["active", "1"], out

        # the next instance (by digest) runs from the cached tree: nothing is fetched (the
        # store's archive is gone, so a copy would fail) nor unpacked again (the marker
        # stays). It runs while imga runs: each container on its own overlay of the tree
        # (docs/images.md, "One image, many instances").
        marker = cached / "etc" / "cached-marker"
        marker.write_text("kept")
        resolved = store.resolve("tiny:1.0")
        store.blob_path(manifest.digest).rename(tmp_path / "away.tar.gz")
        store.resolve = lambda ref: resolved
        second = place(lab, node, store, box("imgb", f"tiny@{manifest.digest}"))
        assert second.status == "successful", second.output_tail[-3000:]
        assert second.hosts[node.name].failed_instances == {}
        assert marker.read_text() == "kept"
        out = node_words(lab, node, f"systemctl is-active {naming.service_unit('imga', 0)} "
                                    f"{naming.service_unit('imgb', 0)}; "
                                    "pgrep -cfx '/usr/bin/sleep 600'")
        assert out == ["active", "active", "2"], out
        # neither wrote into the shared tree (each container's /etc/resolv.conf, /var/log ...
        # went to its own upper layer)
        diff = subprocess.run(["diff", "-r", "--no-dereference", str(tree), str(cached)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert diff.stdout.splitlines() == [f"Only in {cached / 'etc'}: cached-marker"], diff
    finally:
        stop(lab, node, "imga", "imgb")


def test_a_corrupted_image_is_refused_and_nothing_starts(lab, tmp_path):
    node = lab.nodes[0]
    tree = tmp_path / "tiny"
    make_tiny_tree(str(tree), ["/usr/bin/sleep"])
    (tree / "etc" / "corrupt-me").write_text("x")  # its own digest, not in any node's cache
    store = ImageStore(tmp_path / "store")
    manifest = store.build("tiny:2.0", tree)
    blob = store.blob_path(manifest.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    try:
        result = place(lab, node, store, box("imgbad", "tiny:2.0"))
        failed = result.hosts[node.name].failed_instances
        assert "imgbad-0" in failed, (result.hosts, result.output_tail[-3000:])
        assert "digest: mismatch" in failed["imgbad-0"]
        assert "nothing was unpacked" in failed["imgbad-0"]
        assert not (Path(node.root) / CACHE / archive.cache_dir_name(manifest.digest)).exists()
        assert not (Path(node.root) / "etc/systemd/system"
                    / naming.service_unit("imgbad", 0)).exists()
    finally:
        stop(lab, node, "imgbad")



def test_an_image_no_unit_uses_is_pruned_and_one_in_use_is_kept(lab, tmp_path):
    node = lab.nodes[0]
    store = ImageStore(tmp_path / "store")
    cached = {}
    for version, program in (("3.0", "/usr/bin/sleep"), ("3.1", "/usr/bin/tail")):
        make_tiny_tree(str(tmp_path / version), ["/usr/bin/sleep", program])
        digest = store.build(f"tiny:{version}", tmp_path / version).digest
        cached[version] = Path(node.root) / CACHE / archive.cache_dir_name(digest)
    try:
        assert place(lab, node, store, box("imgold", "tiny:3.0")).status == "successful"
        stop(lab, node, "imgold")
        assert cached["3.0"].is_dir()  # kept until a placement prunes
        result = place(lab, node, store, box("imgnew", "tiny:3.1"),
                       walle_image_keep_unused=0)
        assert result.status == "successful", result.output_tail[-3000:]
        assert not cached["3.0"].exists()  # no unit names it any more
        assert cached["3.1"].is_dir()  # imgnew's unit names it
    finally:
        stop(lab, node, "imgold", "imgnew")
