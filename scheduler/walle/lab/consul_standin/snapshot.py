"""Snapshot archives for /v1/snapshot (api-docs/snapshot.mdx).

Like Consul's: a gzipped tar archive holding `meta.json` (ID, Size, Index, Term, Version), the
state, and `SHA256SUMS` over both, verified before a restore. The state is the stand-in's own
JSON (`state.json`, the store's snapshot format) where Consul has a binary `state.bin`: an
archive from one cannot be restored into the other, as Consul documents that the structure is
internal.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time

from .store import SNAPSHOT_VERSION, Store

STATE_MEMBER = "state.json"
META_MEMBER = "meta.json"
SUMS_MEMBER = "SHA256SUMS"
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
MAX_STATE_BYTES = 1024 * 1024 * 1024


class SnapshotError(Exception):
    """The archive cannot be restored; nothing was changed."""


def make_archive(state: dict, index: int) -> bytes:
    body = json.dumps(state, separators=(",", ":")).encode()
    meta = json.dumps({"ID": f"1-{index}-{int(time.time() * 1000)}", "Size": len(body),
                       "Index": index, "Term": 1, "Version": 1}).encode()
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                   for name, data in ((META_MEMBER, meta), (STATE_MEMBER, body))).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((META_MEMBER, meta), (STATE_MEMBER, body), (SUMS_MEMBER, sums)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def read_archive(data: bytes) -> dict:
    """The state inside an archive, verified (hashes, format, loadable) or SnapshotError."""
    members = _members(data)
    missing = [m for m in (META_MEMBER, STATE_MEMBER, SUMS_MEMBER) if m not in members]
    if missing:
        raise SnapshotError(f"failed to read snapshot file: missing {', '.join(missing)} "
                            f"(not a snapshot archive from this stand-in)")
    sums = _parse_sums(members[SUMS_MEMBER])
    for name in (META_MEMBER, STATE_MEMBER):
        if sums.get(name) != hashlib.sha256(members[name]).hexdigest():
            raise SnapshotError(f"failed to verify snapshot: sha256 hash mismatch for {name}")
    try:
        state = json.loads(members[STATE_MEMBER])
    except ValueError as exc:
        raise SnapshotError(f"failed to decode snapshot state: {exc}") from exc
    if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(f"unsupported snapshot state version "
                            f"{state.get('version') if isinstance(state, dict) else None!r}")
    try:
        Store().restore(state)  # a dry run: a restore never stops half-way
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise SnapshotError(f"failed to decode snapshot state: {exc!r}") from exc
    return state


def _members(data: bytes) -> dict[str, bytes]:
    try:
        raw = gzip.GzipFile(fileobj=io.BytesIO(data)).read(MAX_STATE_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise SnapshotError(f"failed to read snapshot file: not a gzip archive ({exc})") from exc
    if len(raw) > MAX_STATE_BYTES:
        raise SnapshotError("failed to read snapshot file: archive too large")
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for info in tar:
                if info.isfile():
                    out[info.name] = tar.extractfile(info).read()
    except tarfile.TarError as exc:
        raise SnapshotError(f"failed to read snapshot file: not a tar archive ({exc})") from exc
    return out


def _parse_sums(data: bytes) -> dict[str, str]:
    sums = {}
    for line in data.decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        if name:
            sums[name] = digest
    return sums
