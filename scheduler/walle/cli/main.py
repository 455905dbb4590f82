"""The `walle` command: one CLI for the whole pool.

Each sub-command lives in its own module exposing `register(subparsers)`, which adds its
parser and sets `func` (taking the parsed args, returning an exit code). Exit codes: 0 ok,
1 the action failed, 2 bad input (usage or an invalid spec), 3 the cluster is unreachable.
Tables go to stdout for people, `--json` prints plain JSON for scripts, progress goes to stderr.

Global options (`--consul-addr`, `--token-file`, `--json`) may come before the command
(`walle --json status`) or after it (`walle status --json`); after it wins.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules under walle.cli that define a sub-command; missing ones are skipped so the CLI
# stays usable while a command is being built.
COMMAND_MODULES = ("validate", "lab", "demo", "jobs", "nodes", "ops", "metrics", "scheduler",
                   "backup", "package", "ui", "events",
                   "image")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def add_json_arg(parser, default=argparse.SUPPRESS) -> None:
    """`--json`: a command's own copy leaves the global value alone unless it is given."""
    parser.add_argument("--json", action="store_true", default=default,
                        help="plain JSON on stdout for scripts")


def add_consul_args(parser, default=argparse.SUPPRESS) -> None:
    """The Consul connection and --json; per command with SUPPRESS defaults, so the global
    options given before the command are not overwritten by a command's unset defaults."""
    parser.add_argument("--consul-addr", metavar="URL", default=default,
                        help="Consul HTTP API (default: $CONSUL_HTTP_ADDR or "
                             "http://127.0.0.1:8500)")
    parser.add_argument("--token-file", metavar="PATH", default=default,
                        help="a file holding the Consul ACL token (default: $CONSUL_HTTP_TOKEN "
                             "or $CONSUL_HTTP_TOKEN_FILE); never a token on the command line")
    add_json_arg(parser, default=False if default is None else default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="walle", description=__doc__.splitlines()[0])
    add_consul_args(parser, default=None)  # the global options
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
    except BrokenPipeError:  # the reader went away (`walle plan | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as Unix tools end


if __name__ == "__main__":
    sys.exit(main())
