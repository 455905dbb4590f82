"""Images (docs/images.md): the control side's store and `walle image`, the archive checks
both sides share, and the node's walle_image module (verify, unpack once, prune)."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest
from module_harness import load_module, prepare_node
from module_harness import run as run_module

from walle.cli.main import main as walle
from walle.images import ImageError, ImageStore, archive
from walle.jobspec import parse_spec

NOW = datetime.datetime(2026, 12, 2, 8, 0, tzinfo=datetime.UTC)


def make_tree(root: Path) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    (root / "usr/bin/hello").chmod(0o755)
    (root / "etc/os-release").write_text("ID=tiny\n")
    (root / "bin").symlink_to("usr/bin")
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")  # the image's own root
    return root


def crafted_tar(path: Path, *members: tuple[str, str, str]) -> Path:
    """A gzip tar of (name, kind, data-or-link-target) members, kind in file/dir/sym/lnk/chr."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data.encode()))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                         "lnk": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE,
                         "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = data
            tar.addfile(info)
    return path


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore(tmp_path / "store")


# ----- build: reproducible, content-addressed ------------------------------------------------
def test_the_same_tree_gives_the_same_digest_whatever_its_times_and_owners(tmp_path):
    one = ImageStore(tmp_path / "s1").build("web:1.0", make_tree(tmp_path / "a"), NOW)
    tree = make_tree(tmp_path / "b")
    os.utime(tree / "usr/bin/hello", (12345, 12345))
    os.chown(tree / "etc/os-release", 1000, 1000)
    two = ImageStore(tmp_path / "s2").build("web:1.0", tree, NOW)
    assert one.digest == two.digest


def test_a_changed_file_changes_the_digest(tmp_path, store):
    tree = make_tree(tmp_path / "a")
    first = store.build("web:1.0", tree, NOW)
    (tree / "etc/os-release").write_text("ID=other\n")
    assert store.build("web:2.0", tree, NOW).digest != first.digest


def test_the_manifest_names_the_archive_by_its_sha256(tmp_path, store):
    manifest = store.build("team/web:1.0", make_tree(tmp_path / "a"), NOW)
    blob = store.blob_path(manifest.digest)
    assert manifest.digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert manifest.size == blob.stat().st_size
    assert (manifest.name, manifest.version, manifest.created) == (
        "team/web", "1.0", "2026-12-02T08:00:00Z")
    on_disk = json.loads((store.root / "manifests/team/web/1.0.json").read_text())
    assert on_disk["digest"] == manifest.digest
    assert store.list() == [manifest]


def test_a_tar_of_the_tree_builds_the_same_image_as_the_tree(tmp_path, store):
    tree = make_tree(tmp_path / "a")
    with tarfile.open(tmp_path / "a.tar.xz", "w:xz") as tar:
        tar.add(tree, arcname=".")
    assert (store.build("web:1.0", tmp_path / "a.tar.xz", NOW).digest
            == store.build("web:1.1", tree, NOW).digest)


def test_a_version_never_changes_content(tmp_path, store):
    tree = make_tree(tmp_path / "a")
    first = store.build("web:1.0", tree, NOW)
    assert store.build("web:1.0", tree, NOW) == first  # same content: nothing to do
    (tree / "etc/os-release").write_text("ID=other\n")
    with pytest.raises(ImageError, match="already exists with digest .* pick a new version"):
        store.build("web:1.0", tree, NOW)
    assert store.resolve("web:1.0").digest == first.digest


def test_unpacking_gives_back_the_tree(tmp_path, store):
    manifest = store.build("web:1.0", make_tree(tmp_path / "a"), NOW)
    dest = tmp_path / "cache" / archive.cache_dir_name(manifest.digest)
    dest.parent.mkdir()
    archive.unpack(str(store.blob_path(manifest.digest)), str(dest))
    assert (dest / "usr/bin/hello").read_text() == "#!/bin/sh\necho hello\n"
    assert os.access(dest / "usr/bin/hello", os.X_OK)
    assert os.readlink(dest / "bin") == "usr/bin"
    assert os.readlink(dest / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".unpack")]


# ----- nothing escapes the root --------------------------------------------------------------
ESCAPES = [
    ([("/etc/passwd", "file", "x")], "absolute paths"),
    ([("../x", "file", "x")], "'..'"),
    ([("a/../../x", "file", "x")], "'..'"),
    ([("dev/null", "chr", "")], "device files"),
    ([("pipe", "fifo", "")], "FIFOs"),
    ([("up", "sym", "../../etc")], "climbs out of the image root"),
    ([("a", "dir", ""), ("a/up", "sym", "../../etc")], "climbs out"),
    ([("etc", "sym", "/etc"), ("etc/passwd", "file", "x")], "below the symlink"),
    ([("shadow", "lnk", "/etc/shadow")], "hard link"),
    ([("shadow", "lnk", "../etc/shadow")], "hard link"),
    ([("etc/a", "file", "x"), ("b", "lnk", "etc/../etc/a")], "hard link"),
]


@pytest.mark.parametrize(("members", "reason"), ESCAPES)
def test_an_archive_that_escapes_its_root_is_refused_everywhere(tmp_path, store, members,
                                                                reason):
    bad = crafted_tar(tmp_path / "bad.tar.gz", *members)
    with pytest.raises(ImageError, match=reason):
        store.import_archive(bad, "bad:1")
    with pytest.raises(ImageError, match=reason):
        store.build("bad:1", bad)
    assert store.list() == [] and not list((store.root / "blobs").iterdir())
    with pytest.raises(ValueError, match=reason):  # the node's own check, before unpacking
        archive.unpack(str(bad), str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists() and not (tmp_path / "etc").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".unpack")] == []


def test_a_device_file_in_a_tree_is_refused(tmp_path, store):
    tree = make_tree(tmp_path / "a")
    os.mkfifo(tree / "etc/pipe")
    with pytest.raises(ImageError, match="device files, sockets and FIFOs"):
        store.build("web:1.0", tree)


def test_set_uid_bits_do_not_survive(tmp_path, store):
    tree = make_tree(tmp_path / "a")
    (tree / "usr/bin/hello").chmod(0o4755)
    manifest = store.build("web:1.0", tree, NOW)
    with tarfile.open(store.blob_path(manifest.digest)) as tar:
        assert tar.getmember("usr/bin/hello").mode == 0o755


# ----- import, resolve, rm ------------------------------------------------------------------
def test_import_keeps_the_archive_bytes_and_checks_a_given_digest(tmp_path, store):
    good = crafted_tar(tmp_path / "good.tar.gz", ("etc", "dir", ""), ("etc/x", "file", "1"))
    digest = archive.file_digest(str(good))
    with pytest.raises(ImageError, match="digest mismatch.*nothing was imported"):
        store.import_archive(good, "app:1", "sha256:" + "0" * 64)
    assert store.list() == []
    manifest = store.import_archive(good, "app:1", digest, NOW)
    assert manifest.digest == digest
    assert store.blob_path(digest).read_bytes() == good.read_bytes()


def test_import_refuses_what_is_not_a_gzip_tar(tmp_path, store):
    (tmp_path / "x.txt").write_text("not a tar")
    with pytest.raises(ImageError, match="not a gzip tar"):
        store.import_archive(tmp_path / "x.txt", "app:1")


def test_resolve_by_version_or_digest_and_unknown_ones_say_what_exists(tmp_path, store):
    manifest = store.build("web:1.0", make_tree(tmp_path / "a"), NOW)
    assert store.resolve("web:1.0") == manifest
    assert store.resolve(f"web@{manifest.digest}") == manifest
    with pytest.raises(ImageError, match=r"unknown version 2.0 of image 'web'.*versions there: "
                                         r"web:1.0.*walle image build web:VERSION"):
        store.resolve("web:2.0")
    with pytest.raises(ImageError, match="unknown digest sha256:0000"):
        store.resolve("web@sha256:" + "0" * 64)
    with pytest.raises(ImageError, match="versions there: none"):
        store.resolve("api:1.0")


def test_rm_keeps_an_archive_another_version_shares(tmp_path, store):
    tree = make_tree(tmp_path / "a")
    one = store.build("web:1.0", tree, NOW)
    store.build("web:1.1", tree, NOW)
    store.remove("web:1.0")
    assert store.blob_path(one.digest).is_file()
    store.remove("web:1.1")
    assert not store.blob_path(one.digest).exists() and store.list() == []
    with pytest.raises(ImageError, match="not in the image store"):
        store.remove("web:1.1")


@pytest.mark.parametrize(("ref", "reason"), [
    ("web", "has no version"), ("Web:1", "lowercase"), ("../web:1", "not an image name"),
    ("web:1/x", "not an image version"), (f"web@sha256:{'a' * 64}", "NAME:VERSION here"),
])
def test_build_refuses_a_bad_name(tmp_path, store, ref, reason):
    with pytest.raises(ImageError, match=reason):
        store.build(ref, make_tree(tmp_path / "a"))


# ----- the CLI ------------------------------------------------------------------------------
def test_cli_build_ls_rm(tmp_path, capsys):
    tree, where = make_tree(tmp_path / "a"), ["--image-store", str(tmp_path / "store")]
    assert walle(["image", "build", "web:1.0", "--from", str(tree), *where]) == 0
    digest = capsys.readouterr().out.strip()
    assert walle(["image", "ls", "--json", *where]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["image"], r["digest"]) for r in rows] == [("web:1.0", digest)]
    assert walle(["image", "rm", "web:1.0", *where]) == 0
    assert walle(["image", "rm", "web:1.0", *where]) == 2
    assert "web:1.0: not in the image store" in capsys.readouterr().err


def test_cli_bad_input_exits_2_with_the_reason(tmp_path, capsys):
    where = ["--image-store", str(tmp_path / "store")]
    assert walle(["image", "build", "web", "--from", str(tmp_path), *where]) == 2
    assert "has no version" in capsys.readouterr().err
    assert walle(["image", "build", "web:1", "--from", str(tmp_path / "nope"), *where]) == 2
    assert "neither a directory nor a tar" in capsys.readouterr().err
    bad = crafted_tar(tmp_path / "bad.tar.gz", ("../x", "file", "x"))
    assert walle(["image", "import", str(bad), "--name", "bad:1", *where]) == 2
    assert "'..' is not allowed" in capsys.readouterr().err


# ----- job specs name images ----------------------------------------------------------------
@pytest.mark.parametrize("ref", ["web:1.0", "team/web:2024.1-rc_1", f"web@sha256:{'a' * 64}"])
def test_a_spec_names_an_image_by_version_or_digest(ref):
    spec = parse_spec({"name": "box", "kind": "service", "resources": {"cpu": 1, "memory": "64M"},
                       "runtime": {"type": "nspawn", "image": ref}})
    assert spec.runtime.image == ref


# ----- the node: walle_image ----------------------------------------------------------------
class NoCommands:
    def get_bin_path(self, name):
        return None

    def run_command(self, argv):
        raise AssertionError(f"walle_image runs no command, got {argv}")


@pytest.fixture
def node(tmp_path, monkeypatch):
    (tmp_path / "node").mkdir()
    node = prepare_node(tmp_path / "node", monkeypatch)
    module = load_module("walle_image")

    def call(args: dict, check: bool = False):
        return run_module(node, NoCommands(), module, {"cache": str(node / "cache"), **args},
                          check=check, monkeypatch=monkeypatch)
    return node, call


@pytest.fixture
def fetched(tmp_path, store):
    """An image in the store and its archive as place.yml leaves it on the node."""
    manifest = store.build("web:1.0", make_tree(tmp_path / "tree"), NOW)
    incoming = tmp_path / "incoming.tar.gz"
    incoming.write_bytes(store.blob_path(manifest.digest).read_bytes())
    return manifest, incoming


def test_present_verifies_unpacks_once_and_drops_the_archive(node, fetched):
    root, call = node
    manifest, incoming = fetched
    kind, result = call({"digest": manifest.digest, "archive": str(incoming)})
    path = root / "cache" / archive.cache_dir_name(manifest.digest)
    assert kind == "exit" and result["changed"] and result["path"] == str(path)
    assert (path / "etc/os-release").read_text() == "ID=tiny\n"
    assert not incoming.exists()
    kind, result = call({"digest": manifest.digest, "archive": str(incoming)})
    assert kind == "exit" and not result["changed"]  # cached: no archive needed


def test_check_mode_unpacks_nothing(node, fetched):
    root, call = node
    manifest, incoming = fetched
    kind, result = call({"digest": manifest.digest, "archive": str(incoming)}, check=True)
    assert kind == "exit" and result["changed"]
    assert not (root / "cache").exists() and incoming.exists()


def test_a_corrupted_archive_is_refused_and_nothing_is_unpacked(node, fetched):
    root, call = node
    manifest, incoming = fetched
    data = bytearray(incoming.read_bytes())
    data[len(data) // 2] ^= 0xFF
    incoming.write_bytes(bytes(data))
    kind, result = call({"digest": manifest.digest, "archive": str(incoming)})
    assert kind == "fail" and result["option"] == "digest"
    assert "mismatch" in result["msg"] and "nothing was unpacked" in result["msg"]
    assert not (root / "cache").exists() and not incoming.exists()


def test_a_missing_archive_and_a_bad_digest_name_their_option(node, fetched):
    _, call = node
    manifest, _ = fetched
    kind, result = call({"digest": manifest.digest, "archive": "/nonexistent.tar.gz"})
    assert (kind, result["option"]) == ("fail", "archive")
    kind, result = call({"digest": "sha256:xyz"})
    assert (kind, result["option"]) == ("fail", "digest")


def test_pruned_removes_only_old_images_no_unit_names(node, fetched):
    root, call = node
    cache = root / "cache"
    old = {name: cache / f"sha256-{name * 64}" for name in "abc"}
    for path in old.values():
        path.mkdir(parents=True)
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    (cache / "operator-dir").mkdir()  # not the cache's own: never touched
    os.utime(cache / "operator-dir", (0, 0))
    fresh = cache / f"sha256-{'d' * 64}"
    fresh.mkdir()
    (root / "etc/walle-web-0.service").write_text(
        f"[Service]\nExecStart=/usr/bin/systemd-nspawn -D {old['a']} -- /bin/sh\n")
    kind, result = call({"state": "pruned", "keep_unused": 3600}, check=True)
    assert kind == "exit" and result["removed"] == [old["b"].name, old["c"].name]
    assert old["b"].exists()  # check mode
    kind, result = call({"state": "pruned", "keep_unused": 3600})
    assert result["changed"] and sorted(p.name for p in cache.iterdir()) == sorted(
        [old["a"].name, fresh.name, "operator-dir"])
    kind, result = call({"state": "pruned", "keep_unused": 3600})
    assert not result["changed"]


# ----- the leader places a job by its image -------------------------------------------------
def box(image: str, name: str = "box"):
    return parse_spec({"name": name, "kind": "service",
                       "resources": {"cpu": 0.1, "memory": "32M"},
                       "runtime": {"type": "nspawn", "image": image}})


def place_specs(store, *specs):
    from test_sandbox_policy import RecordingRunner, alloc

    from walle.service.executor import Executor
    runner = RecordingRunner()
    executor = Executor({}, "http://127.0.0.1:8500", runner=runner, images=store)
    outcomes = executor.place([(alloc(s.name), s) for s in specs], {"node1": "10.77.1.11"})
    return outcomes, runner.calls


def test_the_leader_sends_the_store_archive_and_the_digest_to_the_node(tmp_path, store):
    manifest = store.build("web:1.0", make_tree(tmp_path / "a"), NOW)
    outcomes, calls = place_specs(store, box("web:1.0"), box(f"web@{manifest.digest}", "two"))
    assert all(o.ok for o in outcomes.values())
    for instance in calls[0]["walle_batch"]["node1"]:
        image = instance["image"]
        assert image["digest"] == manifest.digest
        assert image["src"] == str(store.blob_path(manifest.digest))
        assert instance["workload"]["image"] == archive.cache_dir_name(manifest.digest)


def test_an_unknown_image_or_version_is_refused_before_any_node(tmp_path, store):
    store.build("web:1.0", make_tree(tmp_path / "a"), NOW)
    outcomes, calls = place_specs(store, box("web:2.0"), box("api:1.0", "api"))
    assert not outcomes["box-0"].ok and not outcomes["api-0"].ok
    assert "runtime.image: image web:2.0: unknown version 2.0" in outcomes["box-0"].error
    assert "versions there: web:1.0" in outcomes["box-0"].error
    assert "unknown version 1.0 of image 'api'" in outcomes["api-0"].error
    assert all(not c["walle_batch"] for c in calls)  # nothing reached a node
