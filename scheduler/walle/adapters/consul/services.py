"""Service instances in Consul: registration with the agent of the node an instance runs on
(tests and tools use this; on nodes the walle_consul_service module does the same over plain
HTTP, from the same translation), and reading their health."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from walle.adapters.consul.api import ConsulApi
from walle.adapters.consul.errors import ConsulError
from walle.jobspec.grammar import grammar
from walle.jobspec.model import HealthCheck
from walle.node_utils import load

walle_consul = load("walle_consul")  # the registration body, shared with the module
format_duration = grammar.format_duration


@dataclass(frozen=True)
class ServiceInstance:
    id: str
    name: str
    node: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    status: str = "passing"  # worst of its checks, node checks included

    @property
    def passing(self) -> bool:
        return self.status == "passing"


check_id = walle_consul.check_id  # the ID Consul gives a service's single check


def check_options(health: HealthCheck, node_address: str, service_port: int | None) -> dict:
    """walle_consul_service's check_* options for a job's health check: the one place a spec's
    check becomes Consul's (the options -> API body step is module_utils/walle_consul.py,
    shared with the module). The check targets the node's address, never localhost: the
    agent that runs it may not share the instance's network namespace."""
    check: dict[str, Any] = {
        "check_type": health.type,
        "deregister_critical_after": format_duration(health.deregister_after),
    }
    if health.type == "ttl":
        if health.ttl is None:
            raise ValueError("health.ttl: a ttl check needs ttl (seconds)")
        check["check_ttl"] = format_duration(health.ttl)
        return check
    if health.type not in ("http", "tcp"):
        raise ValueError(f"health.type: unknown check type {health.type!r} "
                         "(use http, tcp or ttl)")
    port = health.port if health.port is not None else service_port
    if isinstance(port, str):
        raise ValueError(f"health.port: label {port!r} must be resolved to the instance's port "
                         "first (JobSpec.resolve_port)")
    if port is None:
        raise ValueError(f"health.port: a {health.type} check needs health.port or service.port")
    host = f"[{node_address}]" if ":" in node_address else node_address
    check["check_interval"] = format_duration(health.interval)
    check["check_timeout"] = format_duration(health.timeout)
    if health.type == "http":
        check["check_http"] = f"http://{host}:{port}{health.path}"
    else:
        check["check_tcp"] = f"{host}:{port}"
    return check


def registration(service_id: str, name: str, address: str, port: int | None,
                 tags: Sequence[str] = (), meta: Mapping[str, str] | None = None,
                 check: HealthCheck | None = None) -> dict[str, Any]:
    """The body of PUT /v1/agent/service/register for one instance: exactly what
    walle_consul_service registers for the same instance (the same code builds both)."""
    options: dict[str, Any] = {"service_id": service_id, "name": name, "address": address,
                               "port": port or None, "tags": list(tags),
                               "meta": dict(meta or {})}
    if check is not None:
        options.update(check_options(check, address, port))
    _view, body, _check = walle_consul.desired_service(options)
    return body


def register_instance(api: ConsulApi, service_id: str, name: str, address: str,
                      port: int | None, tags: Sequence[str] = (),
                      meta: Mapping[str, str] | None = None,
                      check: HealthCheck | None = None) -> dict[str, Any]:
    """Register with the agent `api` talks to (replacing its checks); returns the body sent."""
    body = registration(service_id, name, address, port, tags, meta, check)
    status, answer = api.raw("put", "/v1/agent/service/register",
                             params=[("replace-existing-checks", "true")],
                             data=json.dumps(body), what=f"register service {service_id}")
    if status != 200:
        raise ConsulError(f"register {service_id} at {api.address} answered {status}: {answer}")
    return body


def deregister_instance(api: ConsulApi, service_id: str) -> None:
    agent = api.client.agent
    api.call(f"deregister service {service_id}", lambda: agent.service.deregister(service_id))


def update_ttl(api: ConsulApi, check: str, status: str, output: str = "") -> None:
    """PUT /v1/agent/check/update/:id: set a TTL check's status (passing|warning|critical)."""
    if status not in ("passing", "warning", "critical"):
        raise ValueError(f"status must be passing, warning or critical, got {status!r}")
    code, answer = api.raw("put", f"/v1/agent/check/update/{check}",
                           data=json.dumps({"Status": status, "Output": output}),
                           what=f"update check {check}")
    if code != 200:
        raise ConsulError(f"update check {check} at {api.address} answered {code}: {answer}")


def service_health(api: ConsulApi, name: str, passing: bool = True, index: int = 0,
                   wait: str | None = None) -> tuple[int, list[ServiceInstance]]:
    """Instances of `name` (only those whose checks all pass, node checks included, when
    passing=True), as (index, instances) so callers can block on changes."""
    health = api.client.health
    idx, entries = api.call(f"health of {name}", lambda: health.service(
        name, passing=passing, index=index or None, wait=wait))
    return int(idx), sorted(map(instance_from_health, entries or []), key=lambda i: i.id)


_ORDER = {"passing": 0, "warning": 1, "critical": 2}


def instance_from_health(entry: Mapping[str, Any]) -> ServiceInstance:
    svc, node = entry["Service"], entry["Node"]
    statuses = [c.get("Status", "critical") for c in entry.get("Checks") or []]
    worst = max(statuses, key=lambda s: _ORDER.get(s, 2), default="passing")
    return ServiceInstance(
        id=svc["ID"], name=svc["Service"], node=node["Node"],
        address=svc.get("Address") or node.get("Address", ""), port=int(svc.get("Port") or 0),
        tags=tuple(svc.get("Tags") or ()), meta=dict(svc.get("Meta") or {}), status=worst)
