"""What the cluster commands share: the Consul connection and the exit codes."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable

from walle.adapters.consul import (
    ConsulApi,
    ConsulConfig,
    ConsulError,
    ConsulUnreachable,
    RetryPolicy,
    StateStore,
)
from walle.cli.main import EXIT_FAILED, EXIT_UNREACHABLE

# The CLI answers people: fail fast when Consul is down instead of retrying for long.
CLI_RETRY = RetryPolicy(attempts=3, base=0.2, cap=1.0, total=5.0)


class ActionError(Exception):
    """An action on the cluster (scale, stop, drain, install...) that was not done; the
    message says why. Shared by the CLI commands and the web console."""


def add_consul_args(parser) -> None:
    parser.add_argument("--consul-addr", metavar="URL",
                        help="Consul HTTP API (default: $CONSUL_HTTP_ADDR or "
                             "http://127.0.0.1:8500)")
    parser.add_argument("--json", action="store_true", help="plain JSON on stdout for scripts")


def connect(args) -> tuple[ConsulApi, StateStore]:
    api = ConsulApi(ConsulConfig.from_env(addr=getattr(args, "consul_addr", None)),
                    retry=CLI_RETRY)
    return api, StateStore(api)


def cluster_command(fn: Callable) -> Callable:
    """Turn Consul failures into the documented exit codes with one clear line."""

    @functools.wraps(fn)
    def wrapper(args) -> int:
        try:
            return fn(args)
        except ConsulUnreachable as err:
            print(f"walle: {err}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except ConsulError as err:
            print(f"walle: {err}", file=sys.stderr)
            return EXIT_FAILED

    return wrapper


def print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
