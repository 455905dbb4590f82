"""`walle backup FILE` / `walle restore FILE`: Consul snapshots (/v1/snapshot) of the cluster
state. A snapshot holds ALL of Consul's state (Walle's KV, sessions, the catalog, ACLs), so a
restore replaces everything, not only Walle's records; it asks first unless --yes."""

from __future__ import annotations

import sys
from pathlib import Path

from walle.adapters.consul.snapshot import (
    SnapshotFileError,
    check_archive,
    restore_snapshot,
    save_snapshot,
)
from walle.cli.common import add_consul_args, cluster_command, connect, print_json
from walle.cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from walle.files import write_private_atomically

MAX_SNAPSHOT_BYTES = 1024 * 1024 * 1024


def register(subparsers) -> None:
    backup = subparsers.add_parser("backup", help="save a Consul snapshot of the cluster state")
    backup.add_argument("file", metavar="FILE", help="where to write it (0600, atomically)")
    add_consul_args(backup)
    backup.set_defaults(func=cmd_backup)

    restore = subparsers.add_parser(
        "restore", help="restore a Consul snapshot: replaces ALL Consul state")
    restore.add_argument("file", metavar="FILE", help="a file written by `walle backup`")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_consul_args(restore)
    restore.set_defaults(func=cmd_restore)


@cluster_command
def cmd_backup(args) -> int:
    target = Path(args.file)
    if not target.parent.is_dir():
        return _bad_file(f"cannot write {target}: directory {target.parent} does not exist")
    if target.is_dir():
        return _bad_file(f"cannot write {target}: it is a directory")
    api, _ = connect(args)
    try:
        archive = save_snapshot(api)
    except SnapshotFileError as exc:
        print(f"walle: Consul at {api.address} answered something that is not a snapshot: "
              f"{exc}; {target} was not written", file=sys.stderr)
        return EXIT_FAILED
    try:
        write_private_atomically(target, archive.data)
    except OSError as exc:
        return _bad_file(f"cannot write {target}: {exc.strerror or exc}")
    if args.json:
        print_json({"file": str(target), "index": archive.index, "bytes": len(archive.data)})
    else:
        print(f"saved the Consul snapshot at index {archive.index} to {target} "
              f"({len(archive.data)} bytes)")
    return EXIT_OK


@cluster_command
def cmd_restore(args) -> int:
    source = Path(args.file)
    try:
        if source.stat().st_size > MAX_SNAPSHOT_BYTES:
            return _bad_file(f"{source}: larger than {MAX_SNAPSHOT_BYTES} bytes")
        data = source.read_bytes()
    except OSError as exc:
        return _bad_file(f"cannot read {source}: {exc.strerror or exc}")
    try:
        meta = check_archive(data)
    except SnapshotFileError as exc:
        return _bad_file(f"{source}: {exc}; nothing was changed")
    api, _ = connect(args)
    index = meta.get("Index", "?")
    if not args.yes and not _confirmed(source, index, api.address):
        print("walle restore: not confirmed; nothing was changed", file=sys.stderr)
        return EXIT_FAILED
    restore_snapshot(api, data)
    if args.json:
        print_json({"file": str(source), "index": index, "restored": True})
    else:
        print(f"restored the Consul snapshot at index {index} from {source}")
    return EXIT_OK


def _confirmed(source: Path, index, address: str) -> bool:
    print(f"Restore {source} (snapshot index {index}) into Consul at {address}?\n"
          f"This replaces ALL Consul state (Walle's jobs and slots, sessions, the catalog), "
          f"not only Walle's.", file=sys.stderr)
    print("Type 'yes' to continue: ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() == "yes"


def _bad_file(message: str) -> int:
    print(f"walle: {message}", file=sys.stderr)
    return EXIT_USAGE
