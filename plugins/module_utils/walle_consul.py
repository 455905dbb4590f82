# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)
"""One instance's registration with its node's Consul agent: walle_consul_service's options
-> the body of PUT /v1/agent/service/register, and the view compared for idempotence.

The one translation of a health check into Consul's API. Two programs use it: the module on
the nodes (from the walle.pool collection's module_utils) and the scheduler's Consul adapter
(`walle.adapters.consul.services`, through `walle.node_utils`), which registers the same body
for a job spec's check. A spec's health becomes these options in one place on the scheduler
(`walle.adapters.consul.services.check_options`). Durations are the node grammar's.

Stdlib and walle_grammar only: it ships with every module run.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import time
import urllib.request

from ansible_collections.walle.pool.plugins.module_utils.walle_grammar import format_duration
from ansible_collections.walle.pool.plugins.module_utils.walle_grammar import (
    parse_duration as _grammar_duration,
)

# The options this translation reads, with walle_consul_service's defaults (its
# argument_spec states the same values; a test holds them equal).
DEFAULTS = {
    "service_id": None, "address": "", "port": None, "tags": [], "meta": {},
    "check_type": "none", "check_http": None, "check_tcp": None, "check_interval": "10s",
    "check_timeout": None, "check_ttl": None, "deregister_critical_after": "1m",
}
CHECK_DIGEST_KEY = "walle_check"
MIN_DEREGISTER = 60.0  # Consul's minimum for DeregisterCriticalServiceAfter
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class ConsulModuleError(ValueError):
    """A refused option: the message names it (`option`); `details` go to fail_json."""

    def __init__(self, msg, option=None, **details):
        super().__init__(msg)
        self.msg = msg
        self.option = option
        self.details = details


def check_id(service_id):
    """The ID Consul gives the single check of a service registered with `Check`."""
    return f"service:{service_id}"


def parse_duration(value, option):
    """'10s', '1m30s', '500ms', '1h' or seconds (10, '10', '0.5') -> seconds (float)."""
    text = str(value).strip()
    try:
        value = float(text)  # module options are strings: '10' means seconds
    except ValueError:
        value = text
    try:
        return _grammar_duration(value)
    except ValueError as err:
        raise ConsulModuleError(f"{option}: {text!r}: {err}", option=option) from err


def validate_meta(meta):
    if len(meta) > 63:  # one pair is kept for the check digest
        raise ConsulModuleError(f"meta: {len(meta)} pairs; Consul allows 64 and the module "
                                f"keeps one for {CHECK_DIGEST_KEY}", option="meta")
    out = {}
    for key, value in meta.items():
        if not _META_KEY.match(str(key)) or str(key).startswith("consul-"):
            raise ConsulModuleError(
                f"meta.{key}: keys are 1..128 characters of letters, digits, _ and -, and "
                f"must not start with consul-", option="meta")
        if key == CHECK_DIGEST_KEY:
            raise ConsulModuleError(f"meta.{key}: reserved by walle_consul_service",
                                    option="meta")
        text = "" if value is None else str(value)
        if len(text) > 512:
            raise ConsulModuleError(f"meta.{key}: value of {len(text)} characters; Consul "
                                    f"allows 512", option="meta")
        out[str(key)] = text
    return out


def desired_check(params, service_id):
    """The check of the registration ({} for check_type none), with its CheckID."""
    kind = params["check_type"]
    if kind == "none":
        return {}
    check = {"CheckID": check_id(service_id), "Name": f"{params['name']} {kind}"}
    deregister = parse_duration(params["deregister_critical_after"], "deregister_critical_after")
    if deregister < MIN_DEREGISTER:
        raise ConsulModuleError(
            f"deregister_critical_after: {params['deregister_critical_after']} is under "
            f"Consul's minimum of 1m", option="deregister_critical_after")
    check["DeregisterCriticalServiceAfter"] = format_duration(deregister)
    if kind == "ttl":
        _require(params, "check_ttl", kind)
        check["TTL"] = format_duration(parse_duration(params["check_ttl"], "check_ttl"))
        return check
    check["Interval"] = format_duration(parse_duration(params["check_interval"],
                                                       "check_interval"))
    if params.get("check_timeout"):
        check["Timeout"] = format_duration(parse_duration(params["check_timeout"],
                                                          "check_timeout"))
    if kind == "http":
        _require(params, "check_http", kind)
        if not re.match(r"^https?://", params["check_http"]):
            raise ConsulModuleError("check_http: must be an http:// or https:// URL",
                                    option="check_http")
        check["HTTP"] = params["check_http"]
    elif kind == "tcp":
        _require(params, "check_tcp", kind)
        if not re.match(r"^\S+:\d{1,5}$", params["check_tcp"]):
            raise ConsulModuleError("check_tcp: must be host:port", option="check_tcp")
        check["TCP"] = params["check_tcp"]
    else:
        raise ConsulModuleError(f"check_type: {kind!r} is not a check type; use http, tcp, "
                                "ttl or none", option="check_type")
    return check


def _require(params, option, kind):
    if not params.get(option):
        raise ConsulModuleError(f"{option}: required for a {kind} check", option=option)


def probe_check(check, timeout):
    """One run of an HTTP or TCP check from this node, judged as Consul's agent judges it
    (HTTP: a 2xx answer; TCP: a completed connect): True when it passes. Anything else (no
    answer, 429 warning, 5xx, a certificate this node does not trust) is False."""
    if check.get("HTTP"):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(check["HTTP"],
                                         headers={"User-Agent": "Consul Health Check"})
        try:
            with opener.open(request, timeout=timeout) as answer:
                return 200 <= answer.status < 300
        except (OSError, ValueError, http.client.HTTPException):  # HTTPError is an OSError
            return False
    if check.get("TCP"):
        host, _colon, port = check["TCP"].rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
            return True
        except (OSError, ValueError):
            return False
    return False


def initial_status(check, wait_s, probe=probe_check, clock=time.monotonic, sleep=time.sleep):
    """The Status to register `check` with: "passing" when it passed a probe of our own within
    `wait_s` seconds (tried every 0.1 s), else None (Consul's default, critical). Consul runs
    a new check's first probe after a random stagger within its interval; a check seen
    passing here need not wait for that, and one that is not stays critical until the agent
    says otherwise. TTL checks are never probed: only their node can say they pass."""
    if wait_s <= 0 or not (check.get("HTTP") or check.get("TCP")):
        return None
    check_timeout = parse_duration(check.get("Timeout") or "10s", "check_timeout")
    # never longer than the agent's own first run may take (the stagger is within Interval)
    wait_s = min(wait_s, parse_duration(check.get("Interval") or "10s", "check_interval"))
    deadline = clock() + wait_s
    while True:
        left = deadline - clock()
        if probe(check, max(0.1, min(check_timeout, left))):
            return "passing"
        if clock() + 0.1 >= deadline:
            return None
        sleep(0.1)


def check_digest(check):
    raw = json.dumps(check, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def desired_service(options):
    """(comparable view, registration body, check) from the module's options; options left
    out take the module's defaults."""
    params = dict(DEFAULTS, **options)
    service_id = params["service_id"] or params["name"]
    port = params.get("port")
    if port is not None and not 1 <= port <= 65535:
        raise ConsulModuleError(f"port: {port} is not in 1..65535", option="port")
    meta = validate_meta(params.get("meta") or {})
    check = desired_check(params, service_id)
    if check:
        meta[CHECK_DIGEST_KEY] = check_digest(check)
    view = {"ID": service_id, "Service": params["name"], "Tags": list(params["tags"] or []),
            "Meta": meta, "Port": port or 0, "Address": params.get("address") or ""}
    body = {"ID": service_id, "Name": params["name"], "Tags": view["Tags"], "Meta": meta,
            "Address": view["Address"]}
    if port:
        body["Port"] = port
    if check:
        body["Check"] = {k: v for k, v in check.items() if k != "CheckID"}
    return view, body, check


def comparable(service):
    """GET /v1/agent/service/<id> -> the fields we manage (server bookkeeping dropped)."""
    if not service:
        return {}
    return {"ID": service.get("ID", ""), "Service": service.get("Service", ""),
            "Tags": list(service.get("Tags") or []), "Meta": dict(service.get("Meta") or {}),
            "Port": int(service.get("Port") or 0), "Address": service.get("Address") or ""}
