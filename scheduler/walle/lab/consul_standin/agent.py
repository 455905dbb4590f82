"""Local-agent operations (api-docs/agent/service.mdx, agent/check.mdx) for one node.

The stand-in has no anti-entropy lag: what a node's agent registers is in the catalog at once.
Check definitions (TTL, HTTP, TCP) are kept in `check_defs`; checkrunner.py runs HTTP/TCP ones.
"""

from __future__ import annotations

import re

from .catalog import ANY_ADDRESSES, STATES, make_check, service_record
from .durations import parse_duration
from .errors import ConsulError, bad_request, not_found, rpc_error
from .fields import as_dict, get, has

MIN_INTERVAL_S = 1.0
DEFAULT_TIMEOUT_S = 10.0
MIN_DEREGISTER_S = 60.0
MAX_OUTPUT = 4096
SERVICE_MAINT_PREFIX = "_service_maintenance:"
CONSUL_SERVICE_ID = "consul"  # the servers' own service: catalog only, no agent registers it
NODE_MAINT = "_node_maintenance"
_DEFAULT_REASON = ("Maintenance mode is enabled for this {what}, but no reason was provided. "
                   "This is a default message.")


def parse_check_type(raw: dict, where: str) -> dict:
    """The runnable part of a check definition, validated like CheckType.Validate."""
    if get(raw, "Args") or get(raw, "ScriptArgs") or get(raw, "Script"):
        raise bad_request(f"{where}: Scripts are disabled on this agent (the stand-in never "
                          "runs script checks); use TTL, HTTP or TCP")
    kinds = [k for k in ("TTL", "HTTP", "TCP") if get(raw, k)]
    if len(kinds) != 1:
        raise bad_request(f"{where}: Check must define exactly one of TTL, HTTP or TCP "
                          "(script, gRPC, Docker and alias checks are not supported)")
    kind = kinds[0].lower()
    spec = {"Type": kind, "TTL": 0.0, "HTTP": get(raw, "HTTP") or "", "TCP": get(raw, "TCP") or "",
            "Method": get(raw, "Method") or "GET", "Header": get(raw, "Header") or {},
            "Body": get(raw, "Body") or "", "TLSSkipVerify": bool(get(raw, "TLSSkipVerify")),
            "Interval": 0.0, "Timeout": DEFAULT_TIMEOUT_S,
            "Deregister": 0.0}
    try:
        if kind == "ttl":
            spec["TTL"] = parse_duration(get(raw, "TTL"), f"{where}.TTL")
        else:
            interval = parse_duration(get(raw, "Interval"), f"{where}.Interval")
            if interval <= 0:
                raise bad_request(f"{where}: Interval must be > 0 for HTTP or TCP checks")
            spec["Interval"] = max(interval, MIN_INTERVAL_S)
            timeout = parse_duration(get(raw, "Timeout"), f"{where}.Timeout")
            spec["Timeout"] = timeout if timeout > 0 else DEFAULT_TIMEOUT_S
        dereg = parse_duration(get(raw, "DeregisterCriticalServiceAfter"),
                               f"{where}.DeregisterCriticalServiceAfter")
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    spec["Deregister"] = max(dereg, MIN_DEREGISTER_S) if dereg > 0 else 0.0
    spec.update(_thresholds(raw, where))
    return spec


def _thresholds(raw: dict, where: str) -> dict[str, int]:
    """SuccessBeforePassing, FailuresBeforeWarning (default: FailuresBeforeCritical) and
    FailuresBeforeCritical: consecutive results needed before the status changes."""
    out = {}
    for name in ("SuccessBeforePassing", "FailuresBeforeCritical", "FailuresBeforeWarning"):
        value = get(raw, name) or 0
        if not isinstance(value, int) or value < 0:
            raise bad_request(f"{where}.{name}: expected a non-negative integer, got {value!r}")
        out[name] = value
    out["FailuresBeforeWarning"] = out["FailuresBeforeWarning"] or out["FailuresBeforeCritical"]
    return out


def _definition(spec: dict) -> dict:
    from .durations import format_duration

    out = {"Interval": format_duration(spec["Interval"]), "Timeout": format_duration(
        spec["Timeout"]), "DeregisterCriticalServiceAfter": format_duration(spec["Deregister"])}
    if spec["Type"] == "http":
        out.update(HTTP=spec["HTTP"], Method=spec["Method"], Header=spec["Header"])
    if spec["Type"] == "tcp":
        out["TCP"] = spec["TCP"]
    return out


class AgentMixin:
    check_defs: dict[tuple[str, str], dict]

    # --- services ------------------------------------------------------------------------
    def agent_register_service(self, node: str, body: dict, replace_checks: bool) -> None:
        service = service_record(body or {}, "Name")
        if service["Address"] in ANY_ADDRESSES:
            raise bad_request("Invalid service address")
        if has(body, "Weights"):
            _validate_weights(service["Weights"])
        _validate_service_meta(service["Meta"])
        raw_checks = [c for c in [get(body, "Check"), *(get(body, "Checks") or [])] if c]
        prepared = [self._prepare_service_check(node, service, as_dict(raw, "Check"), i,
                                                len(raw_checks))
                    for i, raw in enumerate(raw_checks)]
        with self.write():
            self._require_node(node)
            self.put_service(node, service)
            keep = {check["CheckID"] for check, _ in prepared}
            for check, spec in prepared:
                self._put_agent_check(check, spec)
            if replace_checks:
                for (n, cid), check in list(self.checks.items()):
                    if n == node and check["ServiceID"] == service["ID"] and cid not in keep \
                            and not cid.startswith(SERVICE_MAINT_PREFIX):
                        self.delete_check(n, cid)

    def _prepare_service_check(self, node, service, raw, i, count) -> tuple[dict, dict]:
        spec = parse_check_type(raw, f"Checks[{i}]")
        check_id = get(raw, "CheckID") or get(raw, "ID") or f"service:{service['ID']}" + (
            f":{i + 1}" if count > 1 else "")
        name = get(raw, "Name") or f"Service '{service['Service']}' check"
        status = get(raw, "Status") or "critical"
        if status not in STATES:
            raise bad_request(f"Checks[{i}].Status: invalid '{status}' (passing|warning|critical)")
        check = make_check(node, check_id, name, status, notes=get(raw, "Notes") or "",
                           service=service, check_type=spec["Type"],
                           definition=_definition(spec))
        return check, spec

    def _put_agent_check(self, check: dict, spec: dict) -> None:
        """Re-registering keeps the current status and output, as the agent's snapshot does."""
        key = (check["Node"], check["CheckID"])
        old = self.checks.get(key)
        if old is not None and old["Type"] == check["Type"]:
            check = {**check, "Status": old["Status"], "Output": old["Output"]}
        if spec["Type"] == "ttl":
            prev = self.check_defs.get(key)
            spec["ttl_deadline"] = prev.get("ttl_deadline") if prev and old else \
                self.clock() + spec["TTL"]
        self.check_defs[key] = spec
        self.put_check(check)

    def agent_deregister_service(self, node: str, service_id: str) -> None:
        with self.write():
            if (node, service_id) not in self.services:
                raise not_found(f'Unknown service ID "{service_id}"')
            self.delete_service(node, service_id)

    def agent_services(self, node: str) -> dict[str, dict]:
        """A server's internal `consul` service is in the catalog, not in its agent's list."""
        return {sid: _agent_service(svc, self.datacenter)
                for (n, sid), svc in sorted(self.services.items())
                if n == node and sid != CONSUL_SERVICE_ID}

    def agent_service(self, node: str, service_id: str) -> dict:
        svc = self.services.get((node, service_id))
        if svc is None or service_id == CONSUL_SERVICE_ID:
            raise not_found(f'unknown service ID: "{service_id}"')
        return _agent_service(svc, self.datacenter)

    # --- checks --------------------------------------------------------------------------
    def agent_register_check(self, node: str, body: dict) -> None:
        name = get(body, "Name")
        if not name:
            raise bad_request("Missing check name")
        spec = parse_check_type(body, "Check")
        service = None
        if get(body, "ServiceID"):
            service = self.services.get((node, get(body, "ServiceID")))
            if service is None:
                raise not_found(f'ServiceID "{get(body, "ServiceID")}" does not exist')
        status = get(body, "Status") or "critical"
        if status not in STATES:
            raise bad_request(f"Status: invalid '{status}' (passing|warning|critical)")
        check = make_check(node, get(body, "CheckID") or get(body, "ID") or name, name, status,
                           notes=get(body, "Notes") or "", service=service,
                           check_type=spec["Type"], definition=_definition(spec))
        with self.write():
            self._require_node(node)
            self._put_agent_check(check, spec)

    def agent_deregister_check(self, node: str, check_id: str) -> None:
        with self.write():
            if (node, check_id) not in self.checks:
                raise not_found(f'Unknown check ID "{check_id}"')
            self.delete_check(node, check_id)

    def agent_checks(self, node: str) -> dict[str, dict]:
        return {cid: check for (n, cid), check in sorted(self.checks.items())
                if n == node and cid != "serfHealth"}

    def agent_ttl_update(self, node: str, check_id: str, status: str, output: str) -> None:
        if status not in STATES:
            raise bad_request(f"Invalid check status: '{status}'")
        with self.write():
            spec = self.check_defs.get((node, check_id))
            if (node, check_id) not in self.checks:
                raise not_found(f'Unknown check ID "{check_id}"')
            if spec is None or spec["Type"] != "ttl":
                raise rpc_error(f'CheckID "{check_id}" does not have associated TTL')
            spec["ttl_deadline"] = self.clock() + spec["TTL"]
            self.set_check_status(node, check_id, status, truncate_output(output))

    # --- maintenance ---------------------------------------------------------------------
    def agent_service_maintenance(self, node: str, service_id: str, enable: bool,
                                  reason: str) -> None:
        with self.write():
            service = self.services.get((node, service_id))
            if service is None:
                raise not_found(f'Unknown service ID "{service_id}"')
            check_id = SERVICE_MAINT_PREFIX + service_id
            if not enable:
                self.delete_check(node, check_id)
            elif (node, check_id) not in self.checks:
                self.put_check(make_check(
                    node, check_id, "Service Maintenance Mode", "critical",
                    notes=reason or _DEFAULT_REASON.format(what="service"), service=service,
                    check_type="maintenance"))

    def agent_node_maintenance(self, node: str, enable: bool, reason: str) -> None:
        with self.write():
            self._require_node(node)
            if not enable:
                self.delete_check(node, NODE_MAINT)
            elif (node, NODE_MAINT) not in self.checks:
                self.put_check(make_check(node, NODE_MAINT, "Node Maintenance Mode", "critical",
                                          notes=reason or _DEFAULT_REASON.format(what="node"),
                                          check_type="maintenance"))

    def _require_node(self, node: str) -> None:
        if node not in self.nodes:
            raise ConsulError(500, f'the agent\'s node "{node}" is not in the catalog')

    # --- timers --------------------------------------------------------------------------
    def expire_ttl_checks(self, now: float) -> None:
        due = [key for key, spec in self.check_defs.items()
               if spec["Type"] == "ttl" and spec.get("ttl_deadline") is not None
               and spec["ttl_deadline"] <= now]
        if not due:
            return
        with self.write():
            for key in due:
                self.check_defs[key] = {**self.check_defs[key], "ttl_deadline": None}
                self.set_check_status(*key, "critical", "TTL expired")

    def reap_critical_services(self, now: float) -> None:
        """DeregisterCriticalServiceAfter: remove services whose check stayed critical."""
        with self.write():
            for key, spec in list(self.check_defs.items()):
                since = self.critical_since.get(key)
                check = self.checks.get(key)
                if spec["Deregister"] and since is not None and check and check["ServiceID"] \
                        and now - since > spec["Deregister"]:
                    self.delete_service(key[0], check["ServiceID"])


def truncate_output(output: str) -> str:
    """checks.CheckTTL.SetStatus: output beyond check_output_max_size (4096) is cut and says
    so, as Consul's TTL checks do."""
    if len(output) <= MAX_OUTPUT:
        return output
    return f"{output[:MAX_OUTPUT]} ... (captured {MAX_OUTPUT} of {len(output)} bytes)"


META_MAX_PAIRS, META_KEY_MAX, META_VALUE_MAX = 64, 128, 512
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")


def _validate_weights(weights: dict) -> None:
    """structs.ValidateWeights, answered 400 "Invalid Weights: ..." by the agent endpoint."""
    passing, warning = get(weights, "Passing", 0), get(weights, "Warning", 0)
    reason = ("Passing must be greater than 0" if not isinstance(passing, int) or passing < 1
              else "Warning must be greater or equal than 0"
              if not isinstance(warning, int) or warning < 0
              else "DNS Weight must be between 0 and 65535"
              if passing > 65535 or warning > 65535 else None)
    if reason:
        raise bad_request(f"Invalid Weights: {reason}")


def _validate_service_meta(meta: dict[str, str]) -> None:
    """structs.ValidateServiceMetadata, answered 400 "Invalid Service Meta: ...": at most 64
    pairs, keys of letters, digits, _ and - up to 128 characters, not starting with
    "consul-", values up to 512 characters."""
    if len(meta) > META_MAX_PAIRS:
        raise bad_request("Invalid Service Meta: Node metadata cannot contain more than "
                          f"{META_MAX_PAIRS} key/value pairs")
    for key, value in meta.items():
        reason = ("Key cannot be blank" if not key
                  else "Key contains invalid characters" if not _META_KEY.match(key)
                  else f"Key is too long (limit: {META_KEY_MAX} characters)"
                  if len(key) > META_KEY_MAX
                  else "Key prefix 'consul-' is reserved for internal use"
                  if key.startswith("consul-")
                  else f"Value is too long (limit: {META_VALUE_MAX} characters)"
                  if len(value) > META_VALUE_MAX else None)
        if reason:
            raise bad_request(f"Invalid Service Meta: Couldn't load metadata pair "
                              f"('{key}', '{value}'): {reason}")


def _agent_service(svc: dict, datacenter: str) -> dict:
    out = {k: svc[k] for k in ("ID", "Service", "Tags", "Meta", "Port", "Address",
                               "TaggedAddresses", "Weights", "EnableTagOverride")}
    out["Datacenter"] = datacenter
    return out
