# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)
"""Image archives: the checks and the unpacking both sides share (docs/images.md).

An image is a gzip-compressed tar of a root tree, named by the sha256 of the compressed bytes.
The control side (`walle image build/import`, walle.images) checks an archive's members with
`checked_members` before it enters the store; the node (the walle_image module) checks the
digest and the members again before it unpacks, since the file crossed the network.

Stdlib only: it ships to the nodes inside the walle_image module.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import tarfile
import time

DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
CACHE_ENTRY = re.compile(r"sha256-[0-9a-f]{64}")  # the cache's own directories
RUNTIME_UNIT_DIR = "/run/systemd/system"
_CHUNK = 1 << 20


def cache_dir_name(digest: str) -> str:
    """'sha256:<hex>' -> 'sha256-<hex>', the image's directory in the node's cache."""
    match = DIGEST.fullmatch(digest)
    if match is None:
        raise ValueError(f"{digest!r} is not an image digest: write sha256: and 64 lowercase "
                         "hex digits")
    return f"sha256-{match[1]}"


def file_digest(path: str) -> str:
    """'sha256:<hex>' of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def member_path(name: str) -> str:
    """A member's path relative to the image root, or ValueError when it would land outside
    it: absolute paths and '..' are refused ('./x' and 'x/' are the same as 'x')."""
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise ValueError(f"member {name!r}: absolute paths are not allowed in an image")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"member {name!r}: '..' is not allowed in an image path")
    return "/".join(parts)


def checked_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members of an image tar, each with its normalised name, or ValueError naming the
    first that could escape the root or is not a plain tree entry: device files and FIFOs,
    hard links to anything but an earlier file, symlinks that climb above the root, and any
    member below a symlink (unpacking would follow it out of the tree). An absolute symlink
    target is the image's own root once the container runs, and is never followed here."""
    members, files, links = [], set(), set()
    for info in tar:
        path = member_path(info.name)
        if not path:
            continue  # the root itself
        above = path.split("/")
        if any("/".join(above[:i]) in links for i in range(1, len(above))):
            raise ValueError(f"member {info.name!r}: lies below the symlink in the image")
        if info.isdev() or info.isfifo():
            raise ValueError(f"member {info.name!r}: device files and FIFOs are not allowed "
                             "in an image (systemd-nspawn provides /dev)")
        if info.islnk():
            try:
                target = member_path(info.linkname)
            except ValueError:
                target = None
            if target not in files:
                raise ValueError(f"member {info.name!r}: a hard link must point to an earlier "
                                 f"file of the image, not {info.linkname!r}")
            info.linkname = target
        elif info.issym():
            _check_symlink(info.name, path, info.linkname)
            links.add(path)
        elif not (info.isfile() or info.isdir()):
            raise ValueError(f"member {info.name!r}: type {info.type!r} is not allowed")
        if info.isfile() or info.islnk():
            files.add(path)
        info.name = path
        info.mode &= 0o1777  # no set-uid/set-gid files from an image
        members.append(info)
    return members


def _check_symlink(name: str, path: str, target: str) -> None:
    """A relative target may not climb above the root, counting from the link's folder."""
    if "\x00" in target or not target:
        raise ValueError(f"member {name!r}: empty or binary symlink target")
    if target.startswith("/"):
        return
    depth = 0
    for part in (posixpath.dirname(path) + "/" + target).split("/"):
        depth += -1 if part == ".." else (0 if part in ("", ".") else 1)
        if depth < 0:
            raise ValueError(f"member {name!r}: symlink to {target!r} climbs out of the image "
                             "root")


def unpack(archive: str, dest: str) -> None:
    """Unpack a checked archive into the new directory dest, all or nothing: the tree is made
    in a temporary sibling and renamed into place, so dest exists only when complete."""
    parent = os.path.dirname(dest)
    tmp = os.path.join(parent, f".unpack-{os.path.basename(dest)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp, 0o755)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = checked_members(tar)
            extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            tar.extractall(tmp, members=members, numeric_owner=True, **extra)  # noqa: S202
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def referenced(cache: str, entry: str, unit_dirs: tuple[str, ...]) -> bool:
    """Whether a walle unit file names the cached image (its -D path). A unit that cannot be
    read counts as a reference: when in doubt, keep the image."""
    paths = {os.path.join(cache, entry), os.path.join(os.path.realpath(cache), entry)}
    for folder in unit_dirs:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for unit in names:
            if not unit.startswith("walle-"):
                continue
            try:
                with open(os.path.join(folder, unit), encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except IsADirectoryError:
                continue
            except OSError:
                return True
            if any(p in text for p in paths):
                return True
    return False


def unused_entries(cache: str, keep_unused: float, unit_dirs: tuple[str, ...],
                   now: float | None = None) -> list[str]:
    """Cached images no walle unit names and none placed for keep_unused seconds (each
    placement touches its image), so an image being placed right now is never removed.
    Only the cache's own sha256-* directories are considered."""
    now = time.time() if now is None else now
    try:
        names = sorted(os.listdir(cache))
    except FileNotFoundError:
        return []
    out = []
    for entry in names:
        path = os.path.join(cache, entry)
        if not CACHE_ENTRY.fullmatch(entry) or os.path.islink(path) or not os.path.isdir(path):
            continue
        if now - os.stat(path).st_mtime < keep_unused or referenced(cache, entry, unit_dirs):
            continue
        out.append(entry)
    return out
