"""The `walle` command: one CLI for the whole pool.

Each sub-command lives in its own module exposing `register(subparsers)`, which adds its
parser and sets `func` (taking the parsed args, returning an exit code). Exit codes: 0 ok,
1 the action failed, 2 bad input (usage or an invalid spec), 3 the cluster is unreachable.
Tables go to stdout for people, `--json` prints plain JSON for scripts, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules under walle.cli that define a sub-command; missing ones are skipped so the CLI
# stays usable while a command is being built.
COMMAND_MODULES = ("validate", "lab", "demo", "jobs", "nodes", "ops", "metrics", "scheduler",
                   "backup", "package", "image")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="walle", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"walle.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"walle.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
