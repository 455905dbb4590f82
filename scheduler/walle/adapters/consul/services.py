"""Service instances in Consul: registration with the agent of the node an instance runs on
(tests and the CLI use this; on nodes the walle_consul_service module does the same over
plain HTTP), and reading their health."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from walle.adapters.consul.api import ConsulApi, go_duration
from walle.adapters.consul.errors import ConsulError
from walle.spec.model import HealthCheck

MIN_DEREGISTER_AFTER = 60.0  # Consul's minimum for DeregisterCriticalServiceAfter


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


def check_id(service_id: str) -> str:
    """The ID Consul gives the single check of a service registered with `Check`."""
    return f"service:{service_id}"


def check_definition(check: HealthCheck, *, name: str, address: str, port: int | None
                     ) -> dict[str, Any]:
    """A Consul check body for a JobSpec HealthCheck (http, tcp or ttl)."""
    target_port = check.port or port
    body: dict[str, Any] = {
        "Name": f"{name} {check.type}",
        "DeregisterCriticalServiceAfter": go_duration(max(check.deregister_after,
                                                          MIN_DEREGISTER_AFTER)),
    }
    if check.type in ("http", "tcp"):
        if not target_port:
            raise ValueError(f"health.port: a {check.type} check of {name!r} needs a port "
                             f"(set health.port or service.port)")
        host = f"[{address}]" if ":" in address else address
        body["Interval"] = go_duration(check.interval)
        body["Timeout"] = go_duration(check.timeout)
        if check.type == "http":
            path = check.path if check.path.startswith("/") else "/" + check.path
            body["HTTP"] = f"http://{host}:{target_port}{path}"
        else:
            body["TCP"] = f"{host}:{target_port}"
    elif check.type == "ttl":
        body["TTL"] = go_duration(check.ttl or max(3 * check.interval, 10.0))
    else:
        raise ValueError(f"health.type: unknown check type {check.type!r} "
                         f"(use http, tcp or ttl)")
    return body


def registration(service_id: str, name: str, address: str, port: int | None,
                 tags: Sequence[str] = (), meta: Mapping[str, str] | None = None,
                 check: HealthCheck | None = None) -> dict[str, Any]:
    """The body of PUT /v1/agent/service/register for one instance."""
    body: dict[str, Any] = {"ID": service_id, "Name": name, "Address": address,
                            "Tags": list(tags), "Meta": dict(meta or {})}
    if port:
        body["Port"] = port
    if check is not None:
        body["Check"] = check_definition(check, name=name, address=address, port=port)
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
