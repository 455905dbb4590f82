"""Consul's snapshot API (api-docs/snapshot.mdx) for `walle backup` / `walle restore`.

`GET /v1/snapshot` answers a gzipped tar archive of the servers' whole state (KV, sessions,
catalog, ACLs...) with X-Consul-Index = the index it was taken at; `PUT /v1/snapshot` restores
one. The archive's content is Consul's own; Walle only checks what every snapshot has: gzip,
tar, `meta.json` and `SHA256SUMS` over the other members (Consul verifies the same on restore).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from dataclasses import dataclass

from consul.exceptions import ConsulException

from walle.adapters.consul.api import ConsulApi
from walle.adapters.consul.errors import ConsulError

SNAPSHOT_PATH = "/v1/snapshot"
_SMALL = 1024 * 1024  # meta.json and SHA256SUMS are a few hundred bytes


@dataclass(frozen=True)
class SnapshotArchive:
    index: int  # Consul's index when the snapshot was taken
    data: bytes


class SnapshotFileError(ValueError):
    """The bytes are not a snapshot archive (or one whose checksums fail); the message says
    what is wrong."""


def save_snapshot(api: ConsulApi) -> SnapshotArchive:
    """Take a snapshot of the whole Consul state (needs a management token with ACLs)."""
    http, headers = api.client.http, api.client.prepare_headers()

    def once() -> SnapshotArchive:
        resp = http.get(lambda r: r, SNAPSHOT_PATH, params=[], headers=headers, raw=True)
        if resp.code >= 500:
            raise ConsulException(f"{resp.code} {_text(resp.body)}")
        if resp.code != 200:
            raise ConsulError(f"GET {SNAPSHOT_PATH} at {api.address} answered {resp.code}: "
                              f"{_text(resp.body)}")
        return SnapshotArchive(int(resp.headers.get("X-Consul-Index", 0)), resp.body)

    archive = api.call(f"GET {SNAPSHOT_PATH}", once)
    check_archive(archive.data)  # never hand back (or write) something that cannot restore
    return archive


def restore_snapshot(api: ConsulApi, data: bytes) -> None:
    """Replace the whole Consul state with a snapshot. Consul verifies it and changes nothing
    when it refuses; a refusal (any answer but 200) is a ConsulError, not retried."""
    check_archive(data)
    http, headers = api.client.http, api.client.prepare_headers()

    def once() -> None:
        resp = http.put(lambda r: r, SNAPSHOT_PATH, params=[], headers=headers, data=data)
        if resp.code != 200:
            raise ConsulError(f"Consul at {api.address} refused the snapshot "
                              f"({resp.code}): {_text(resp.body)}")

    api.call(f"PUT {SNAPSHOT_PATH}", once)


def check_archive(data: bytes) -> dict:
    """Verify an archive as Consul will (gzip, tar, SHA256SUMS); returns its meta.json.
    Members are hashed as they stream by: a large (or hostile) archive is never held whole."""
    digests: dict[str, str] = {}
    small: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=gzip.GzipFile(fileobj=io.BytesIO(data)), mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                digest, member = hashlib.sha256(), tar.extractfile(info)
                while chunk := member.read(1024 * 1024):
                    digest.update(chunk)
                    if info.name in ("meta.json", "SHA256SUMS") and info.size <= _SMALL:
                        small[info.name] = small.get(info.name, b"") + chunk
                digests[info.name] = digest.hexdigest()
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise SnapshotFileError(f"not a Consul snapshot (gzipped tar archive): {exc}") from exc
    for required in ("meta.json", "SHA256SUMS"):
        if required not in small:
            raise SnapshotFileError(f"not a Consul snapshot: the archive has no {required}")
    sums = {}
    for line in small["SHA256SUMS"].decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        sums[name.strip()] = digest.strip()
    unlisted = sorted(set(digests) - set(sums) - {"SHA256SUMS"})
    if unlisted:
        raise SnapshotFileError(f"snapshot member(s) {', '.join(unlisted)} not in SHA256SUMS")
    for name, digest in sums.items():
        if name not in digests:
            raise SnapshotFileError(f"snapshot member {name} listed in SHA256SUMS is missing")
        if digests[name] != digest:
            raise SnapshotFileError(f"snapshot member {name} fails its SHA-256 checksum "
                                    f"(the file is damaged or was edited)")
    try:
        meta = json.loads(small["meta.json"])
    except ValueError as exc:
        raise SnapshotFileError(f"snapshot meta.json is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise SnapshotFileError("snapshot meta.json is not an object")
    return meta


def _text(body: bytes | str) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    return text.strip()[:500]
