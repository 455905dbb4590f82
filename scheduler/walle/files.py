"""Durable private files, shared by the CLI (`walle backup`) and the lab's Consul stand-in
(snapshots): one implementation of "replace a file atomically and durably"."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (POSIX: sync the directory too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_atomically(path: Path, data: bytes) -> None:
    """Temp file 0600 next to `path`, fsync, rename over it, fsync the directory: a crash
    leaves the old file or the new one, never a part, and never a readable temp file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
