"""What the cluster commands share: the Consul connection and the exit codes."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable

from walle.adapters.consul import (
    ConsulApi,
    ConsulConfig,
    ConsulConfigError,
    ConsulError,
    ConsulUnreachable,
    RetryPolicy,
    StateStore,
)
from walle.adapters.consul.config import read_token_file
from walle.cli.main import (  # the option helpers are re-exported for the commands
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    add_consul_args,  # noqa: F401
    add_json_arg,  # noqa: F401
)
from walle.service.jobs import ActionError  # noqa: F401 - re-exported for the commands

# The CLI answers people: fail fast when Consul is down instead of retrying for long.
CLI_RETRY = RetryPolicy(attempts=3, base=0.2, cap=1.0, total=5.0)


def connect(args) -> tuple[ConsulApi, StateStore]:
    """The Consul API as the global options say (`--token-file` wins over the environment)."""
    token_file = getattr(args, "token_file", None)
    config = ConsulConfig.from_env(addr=getattr(args, "consul_addr", None),
                                   token=read_token_file(token_file) if token_file else None)
    api = ConsulApi(config, retry=CLI_RETRY)
    return api, StateStore(api)


def cluster_command(fn: Callable) -> Callable:
    """Turn Consul failures into the documented exit codes with one clear line."""

    @functools.wraps(fn)
    def wrapper(args) -> int:
        try:
            return fn(args)
        except ConsulConfigError as err:  # a bad --consul-addr, --token-file or CONSUL_*
            print(f"walle: {err}", file=sys.stderr)
            return EXIT_USAGE
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
