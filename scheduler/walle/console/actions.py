"""The console's actions: scale, stop, drain, install. Each runs with the Consul ACL token the
operator typed into the page, through the code the CLI runs (cli/jobs.py, cli/nodes.py,
cli/package.py), so a change made from the page is the change `walle scale` would make.

Authentication (docs/console.md): no token -> 401. The token is asked about at
`/v1/acl/token/self`: Consul refusing it -> 403; a Consul with ACLs off (401 "ACL support
disabled") or without an ACL system at all (the lab stand-in: 404) -> any non-empty token is
taken. Every write goes to Consul with that token, so an ACL-enforcing Consul also refuses
what the token may not do (403).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from walle.adapters.consul import (
    ConsulApi,
    ConsulConfig,
    ConsulDenied,
    ConsulError,
    ConsulUnreachable,
    RetryPolicy,
    StateStore,
)
from walle.catalog import Catalog, CatalogError, parse_sets
from walle.cli.common import ActionError
from walle.cli.nodes import drain_node
from walle.cli.package import install_package
from walle.jobspec import SpecError
from walle.service import jobs

# Actions answer a person waiting on a page: fail fast when Consul is down.
ACTION_RETRY = RetryPolicy(attempts=3, base=0.2, cap=1.0, total=5.0)
MAX_NAME = 256
MAX_VALUES = 100


class Refused(Exception):
    """An action that was not done: the HTTP status to answer and why, for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def authorize(config: ConsulConfig, token: str | None) -> ConsulApi:
    """A Consul connection acting with `token`, once Consul has not refused it."""
    if not token or not token.strip():
        raise Refused(401, "actions need a Consul ACL token: enter it in the token field")
    token = token.strip()
    api = ConsulApi(dataclasses.replace(config, token=token), retry=ACTION_RETRY)
    status, body = api.raw("get", "/v1/acl/token/self", what="token check")
    if status == 200:
        return api
    if status == 403:
        raise Refused(403, f"Consul refused the token: {_text(body)}")
    if status == 404 or (status == 401 and "disabled" in _text(body).lower()):
        return api  # no ACL system (the lab stand-in) or ACLs off: nothing to check against
    raise Refused(403, f"Consul did not accept the token ({status}: {_text(body)})")


def _text(body: Any) -> str:
    return " ".join(str(body or "").split())[:300]


# ----- the actions: body fields are checked here, then the CLI's code does the work ------
def _name(body: Mapping[str, Any], field: str, required: bool = True) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        if required:
            raise Refused(400, f"{field}: required")
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME or not value.strip():
        raise Refused(400, f"{field}: expected a name of at most {MAX_NAME} characters")
    return value.strip()


def scale(api: ConsulApi, body: Mapping[str, Any], catalog: Catalog | None) -> str:
    job = _name(body, "job")
    count = body.get("count")
    if isinstance(count, str) and count.strip().isdigit():
        count = int(count)
    try:
        jobs.scale(StateStore(api), job, count)
    except jobs.BadCount as err:
        raise Refused(400, f"count: {err}") from err
    return f"{job}: scaled to {count}"


def stop(api: ConsulApi, body: Mapping[str, Any], catalog: Catalog | None) -> str:
    job = _name(body, "job")
    unclaimed = jobs.stop(api, StateStore(api), job)
    if unclaimed:
        return (f"{job}: not in Consul; stopping its {len(unclaimed)} unclaimed instance(s) "
                "at the leader's next pass")
    return f"{job}: stopping"


def drain(api: ConsulApi, body: Mapping[str, Any], catalog: Catalog | None) -> str:
    node = _name(body, "node")
    undo = body.get("undo", False)
    if not isinstance(undo, bool):
        raise Refused(400, "undo: expected true or false")
    drain_node(api, StateStore(api), node, undo=undo)
    return f"{node}: schedulable again" if undo else \
        f"{node}: draining; its instances move to other nodes"


def install(api: ConsulApi, body: Mapping[str, Any], catalog: Catalog | None) -> str:
    if catalog is None:
        raise Refused(503, "no package catalog was loaded (walle ui --catalog DIR)")
    name = _name(body, "name")
    version = _name(body, "version", required=False)
    values = body.get("values") or []
    if (not isinstance(values, list) or len(values) > MAX_VALUES
            or not all(isinstance(v, str) for v in values)):
        raise Refused(400, f"values: expected a list of at most {MAX_VALUES} NAME=VALUE texts")
    try:
        root = catalog.get(name, version)
        done = install_package(StateStore(api), catalog, root, file_values={},
                               sets=parse_sets(values), upgrade=False)
    except CatalogError as err:
        raise Refused(400, f"{err}; nothing was installed") from err
    return "; ".join(f"{d['name']} {d['version']}: {d['action']} (jobs: {', '.join(d['jobs'])})"
                     for d in done)


ACTIONS: dict[str, Callable[[ConsulApi, Mapping[str, Any], Catalog | None], str]] = {
    "scale": scale, "stop": stop, "drain": drain, "install": install,
}


def perform(config: ConsulConfig, token: str | None, action: str, body: Any,
            catalog: Catalog | None) -> str:
    """Run one action with the operator's token: the message for the page, or Refused."""
    handler = ACTIONS.get(action)
    if handler is None:
        raise Refused(404, f"no action {action!r} (known: {', '.join(ACTIONS)})")
    if not isinstance(body, dict):
        raise Refused(400, "expected a JSON object")
    api = _guarded(lambda: authorize(config, token))
    return _guarded(lambda: handler(api, body, catalog))


def _guarded(fn: Callable[[], Any]) -> Any:
    """Consul's and the CLI code's refusals as HTTP answers."""
    try:
        return fn()
    except Refused:
        raise
    except ConsulDenied as err:
        raise Refused(403, f"Consul refused the token for this action: {err}") from err
    except ConsulUnreachable as err:
        raise Refused(503, str(err)) from err
    except ConsulError as err:
        raise Refused(502, str(err)) from err
    except SpecError as err:
        raise Refused(400, str(err)) from err
    except ActionError as err:
        raise Refused(409, str(err)) from err
