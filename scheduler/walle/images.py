"""The image store on the control side (docs/images.md): content-addressed images.

An image is a gzip tar of a root tree, named by the sha256 of those compressed bytes, plus a
manifest per NAME:VERSION that points at it:

    <store>/blobs/sha256-<hex>.tar.gz
    <store>/manifests/<name>/<version>.json   {"name", "version", "digest", "size", "created"}

`build` packs a directory (or repacks a tar) reproducibly: entries sorted, owner 0:0, mtime 0,
gzip header without name or time, so the same tree gives the same digest. `import_archive`
keeps the bytes of an archive made elsewhere (its digest stays the one its maker published).
Both refuse a tree or archive that could escape the root where it is unpacked. A NAME:VERSION
is immutable: building it again with other content is refused until it is removed.

The placement playbook copies a blob to the node, where the walle_image module checks the
digest and unpacks it once into the node's cache (plugins/module_utils/walle_image.py).
"""

from __future__ import annotations

import datetime
import gzip
import io
import json
import os
import stat
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from walle.jobspec.grammar import grammar
from walle.node_utils import load

archive = load("walle_image")

DEFAULT_STORE = "/var/lib/walle/images-store"
STORE_ENV = "WALLE_IMAGE_STORE"
FIXED_MTIME = 0  # every entry: the digest depends on the tree only, not on when it was packed


class ImageError(ValueError):
    """A refused image operation; the message names the image and the fix."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    digest: str
    size: int  # bytes of the compressed archive
    created: str  # ISO 8601, UTC

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


def store_root(explicit: str | None = None) -> Path:
    """--image-store, else $WALLE_IMAGE_STORE, else /var/lib/walle/images-store."""
    return Path(explicit or os.environ.get(STORE_ENV) or DEFAULT_STORE)


def parse_ref(text: object, *, versioned: bool = False) -> tuple[str, str | None, str | None]:
    """(name, version, digest) of NAME:VERSION or NAME@sha256:HEX (the one node grammar);
    versioned: only NAME:VERSION (what build, import and rm name)."""
    try:
        name, version, digest = grammar.check_image_ref(text)
    except ValueError as err:
        raise ImageError(str(err)) from None
    if versioned and version is None:
        raise ImageError(f"{text!r}: name the image as NAME:VERSION here, such as web:1.0")
    return name, version, digest


class ImageStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()  # the playbook copies from it: never relative

    # ----- reading --------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / f"{archive.cache_dir_name(digest)}.tar.gz"

    def _manifest_path(self, name: str, version: str) -> Path:
        return self.root / "manifests" / name / f"{version}.json"

    def list(self) -> list[Manifest]:
        folder = self.root / "manifests"
        out = [self._read(path) for path in folder.rglob("*.json")] if folder.is_dir() else []
        return sorted(out, key=lambda m: (m.name, m.version))

    def resolve(self, ref: str) -> Manifest:
        """The manifest a job's image names, or ImageError saying what the store holds."""
        name, version, digest = parse_ref(ref)
        known = [m for m in self.list() if m.name == name]
        match = [m for m in known if m.version == version or m.digest == digest]
        if match and self.blob_path(match[0].digest).is_file():
            return match[0]
        if match:
            raise ImageError(f"image {ref}: its archive {self.blob_path(match[0].digest)} is "
                             "missing from the image store; build or import it again")
        have = ", ".join(m.ref for m in known) or "none"
        what = f"version {version}" if version else f"digest {digest}"
        raise ImageError(f"image {ref}: unknown {what} of image {name!r} in the image store "
                         f"{self.root} (versions there: {have}); build it with `walle image "
                         f"build {name}:VERSION --from DIR` or import it")

    def _read(self, path: Path) -> Manifest:
        return Manifest(**json.loads(path.read_text()))

    # ----- writing --------------------------------------------------------------------------
    def build(self, ref: str, source: str | Path, now: datetime.datetime | None = None
              ) -> Manifest:
        """Pack a directory, or repack a tar (any compression), into the image NAME:VERSION."""
        name, version, _ = parse_ref(ref, versioned=True)
        source = Path(source)
        if source.is_dir():
            entries = _tree_entries(source)
        elif source.is_file():
            entries = _tar_entries(source)
        else:
            raise ImageError(f"--from: {source} is neither a directory nor a tar file")
        return self._add(name, version, lambda out: _write_image(entries, out), now,
                         source=str(source))

    def import_archive(self, path: str | Path, ref: str, expect_digest: str | None = None,
                       now: datetime.datetime | None = None) -> Manifest:
        """Keep an image archive (a gzip tar) as it is, after checking its members."""
        name, version, _ = parse_ref(ref, versioned=True)
        if expect_digest is not None and not archive.DIGEST.fullmatch(expect_digest):
            raise ImageError(f"--digest: {expect_digest!r} is not sha256: and 64 hex digits")
        if not Path(path).is_file():
            raise ImageError(f"{path}: no such file")

        def copy(out):
            with open(path, "rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        return self._add(name, version, copy, now, expect_digest, source=str(path))

    def remove(self, ref: str) -> Manifest:
        """Forget NAME:VERSION; its archive goes when no other version shares it. Nodes keep
        their unpacked copy until their instances stop using it (walle_image state=pruned)."""
        name, version, _ = parse_ref(ref, versioned=True)
        path = self._manifest_path(name, version)
        if not path.is_file():
            raise ImageError(f"image {ref}: not in the image store {self.root} (see `walle "
                             "image ls`)")
        manifest = self._read(path)
        path.unlink()
        if all(m.digest != manifest.digest for m in self.list()):
            self.blob_path(manifest.digest).unlink(missing_ok=True)
        return manifest

    def _add(self, name: str, version: str, write, now: datetime.datetime | None,
             expect_digest: str | None = None, source: str = "") -> Manifest:
        """Write the archive, check it as a node will, then file it under its digest."""
        blobs = self.root / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
            _check_archive(tmp, source)
            digest = archive.file_digest(tmp)
            if expect_digest is not None and digest != expect_digest:
                raise ImageError(f"digest mismatch: the archive is {digest}, not "
                                 f"{expect_digest}; nothing was imported")
            existing = self._manifest_path(name, version)
            if existing.is_file() and self._read(existing).digest != digest:
                raise ImageError(f"image {name}:{version} already exists with digest "
                                 f"{self._read(existing).digest}, and this content is {digest}; "
                                 "an image version never changes: pick a new version, or "
                                 f"`walle image rm {name}:{version}` first")
            if existing.is_file():
                return self._read(existing)
            os.replace(tmp, self.blob_path(digest))
            manifest = Manifest(name, version, digest, self.blob_path(digest).stat().st_size,
                                _iso(now))
            _write_json(existing, asdict(manifest))
            return manifest
        finally:
            Path(tmp).unlink(missing_ok=True)


# ----- reproducible archives ----------------------------------------------------------------
Entry = tuple[tarfile.TarInfo, bytes | Path | None]


def _tree_entries(root: Path) -> list[Entry]:
    """Every entry below root, sorted by path; links are kept as links, never followed."""
    out: list[Entry] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                out.append((info, None))
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                out.append((info, None))
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                out.append((info, path))
            else:
                raise ImageError(f"{path}: device files, sockets and FIFOs cannot be in an "
                                 "image (systemd-nspawn provides /dev); remove it from --from")
    return sorted(out, key=lambda e: e[0].name)


def _tar_entries(path: Path) -> list[Entry]:
    """A tar's members, checked like a node checks them; hard links become copies."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = archive.checked_members(tar)
            by_name: dict[str, Entry] = {}
            for info in members:
                source = tar.getmember(info.linkname) if info.islnk() else info
                data = tar.extractfile(source).read() if source.isfile() else None
                if info.islnk():
                    info = _copy_info(info, tarfile.REGTYPE)
                    info.size = len(data or b"")
                by_name[info.name] = (info, data)
    except ValueError as err:
        raise ImageError(f"--from {path}: {err}") from None
    except (OSError, tarfile.TarError, EOFError) as err:
        raise ImageError(f"--from {path}: not a readable tar ({err})") from None
    return sorted(by_name.values(), key=lambda e: e[0].name)


def _copy_info(info: tarfile.TarInfo, kind: bytes) -> tarfile.TarInfo:
    new = tarfile.TarInfo(info.name)
    new.mode, new.type = info.mode, kind
    return new


def _write_image(entries: list[Entry], out) -> None:
    """A gzip tar whose bytes depend only on the entries: fixed owner, time and header."""
    with (gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz,
          tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar):
        for info, data in entries:
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = FIXED_MTIME
            info.mode &= 0o1777
            if info.isfile():
                stream = data.open("rb") if isinstance(data, Path) else io.BytesIO(data)
                with stream:
                    tar.addfile(info, stream)
            else:
                tar.addfile(info)


def _check_archive(path: str, source: str) -> None:
    """What the node's walle_image module will accept: a gzip tar whose members stay inside
    the root (checked once more on the node, after the transfer)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            archive.checked_members(tar)
    except (OSError, tarfile.TarError, EOFError) as err:
        raise ImageError(f"{source}: not a gzip tar image archive ({err})") from None
    except ValueError as err:
        raise ImageError(f"{source}: {err}") from None


def _iso(now: datetime.datetime | None) -> str:
    now = now or datetime.datetime.now(datetime.UTC)
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)

