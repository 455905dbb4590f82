"""The validated job spec: immutable data, produced only by `walle.jobspec.parse`.

Every other room (core, adapters, service, modules' parameters) reads these types; nothing
builds them by hand except tests. Sizes are bytes, durations seconds, CPU in cores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

JobKind = Literal["service", "batch", "cron"]
Concurrency = Literal["forbid", "replace", "allow"]
ScalingMetric = Literal["cpu", "memory", "prometheus"]
RuntimeKind = Literal["exec", "nspawn", "lxc"]
CheckType = Literal["http", "tcp", "ttl"]
RestartPolicy = Literal["always", "on-failure", "no"]
Strategy = Literal["spread", "binpack"]
BalancerMode = Literal["http", "tcp"]
ConstraintOp = Literal["eq", "ne", "in", "not_in", "regex", "distinct_hosts", "max_per"]


@dataclass(frozen=True)
class Range:
    """A guaranteed minimum and a ceiling the instance may use when the node has room."""

    min: float
    max: float

    @property
    def elastic(self) -> bool:
        return self.max > self.min


@dataclass(frozen=True)
class Resources:
    cpu: Range  # cores, fractional allowed
    memory: Range  # bytes: min -> MemoryMin (guaranteed), max -> MemoryMax
    disk: int = 0  # bytes of local disk the instance needs
    io_weight: int = 100  # 1..10000, IOWeight=
    gpus: int = 0
    tasks_max: int | None = None  # TasksMax=


@dataclass(frozen=True)
class Runtime:
    kind: RuntimeKind
    command: str | None = None  # exec: absolute path; nspawn: optional command in the image;
    # lxc: the command in the image (required)
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # sorted pairs, so specs hash stably
    user: str | None = None
    working_dir: str | None = None
    image: str | None = None  # nspawn, lxc: NAME:VERSION or NAME@sha256:HEX (docs/images.md)
    privileged: bool = False  # root, no sandbox: only where the cluster policy allows it
    capabilities: tuple[str, ...] = ()  # kept in the sandbox (cluster policy allows each)
    jit: bool = False  # writable+executable memory (no MemoryDenyWriteExecute)


@dataclass(frozen=True)
class Secret:
    """A secret delivered as the systemd credential `name` ($CREDENTIALS_DIRECTORY/<name>).
    Only the reference is stored with the job; the value is read at each placement."""

    name: str
    source: Literal["consul", "file"]  # Consul KV under walle/secrets/, or the secrets dir
    path: str  # relative: walle/secrets/<path> in KV, or <secrets dir>/<path>


@dataclass(frozen=True)
class Constraint:
    attribute: str  # node attribute: "name", "zone", "rack" or "label.<key>"
    operator: ConstraintOp
    value: str | tuple[str, ...] | int | None = None


@dataclass(frozen=True)
class HealthCheck:
    type: CheckType
    path: str = "/"  # http
    port: int | str | None = None  # http/tcp: a number or a ports label; default service.port
    interval: float = 2.0
    timeout: float = 2.0
    ttl: float | None = None  # ttl checks
    deregister_after: float = 60.0  # DeregisterCriticalServiceAfter (Consul minimum 1m)


@dataclass(frozen=True)
class StopPolicy:
    signal: str = "SIGTERM"
    timeout: float = 30.0  # TimeoutStopSec=
    pre_stop: tuple[str, ...] = ()  # argv run as ExecStop= before the signal
    # seconds between leaving the pool (Consul deregistration) and the stop signal, so load
    # balancers and DNS let the instance go first; None: the cluster default
    # (walle.service.params.DEFAULT_DRAIN_S)
    drain: float | None = None


@dataclass(frozen=True)
class Balancer:
    """A frontend on the hosts of the `lb` group (roles/lb) whose backends are the service's
    passing instances, found through Consul DNS SRV."""

    port: int  # the port clients connect to on the load balancer
    mode: BalancerMode = "http"


@dataclass(frozen=True)
class Port:
    """A port the instance listens on, named by `label`: a fixed `static` port, or (None) one
    the scheduler picks per instance from its node's range (core/ports.py)."""

    label: str  # lowercase identifier: the instance sees WALLE_PORT_<LABEL>
    static: int | None = None


@dataclass(frozen=True)
class Discovery:
    name: str  # Consul service name (DNS label)
    port: int | str | None = None  # a number, or the label of one of the job's ports
    tags: tuple[str, ...] = ()
    lb: Balancer | None = None  # traffic through HAProxy; needs `port`


@dataclass(frozen=True)
class UpdatePolicy:
    max_parallel: int = 1
    health_timeout: float = 30.0  # a batch must pass its checks within this
    auto_rollback: bool = True


@dataclass(frozen=True)
class Scaling:
    """Autoscaling of a service's count within min..max (walle.core.autoscale decides)."""

    min: int
    max: int
    metric: ScalingMetric  # cpu, memory, or prometheus (`query`)
    # cpu/memory: mean use per instance in percent of resources.cpu.max / memory.max;
    # prometheus: the value of `query` (a per-instance figure) the job should sit at
    target: float
    cooldown: float = 60.0  # seconds after a change before the count may fall
    query: str | None = None  # metric prometheus: a PromQL expression giving one number


@dataclass(frozen=True)
class Placement:
    """How the scheduler may move the job's instances once placed."""

    movable: bool = True  # False: never moved off a node under pressure (core/shed.py)


@dataclass(frozen=True)
class JobSpec:
    name: str  # DNS label: [a-z][a-z0-9-]*, at most 40 characters
    kind: JobKind
    resources: Resources
    runtime: Runtime
    count: int = 1
    constraints: tuple[Constraint, ...] = ()
    data: tuple[str, ...] = ()  # dataset names the job wants to run near
    priority: int = 50  # 0..100; higher may preempt lower
    strategy: Strategy | None = None  # None: the cluster default
    health: HealthCheck | None = None
    stop: StopPolicy = field(default_factory=StopPolicy)
    service: Discovery | None = None
    restart: RestartPolicy = "on-failure"
    retries: int = 3  # batch: attempts before the job fails; cron: retries of a failed run
    schedule: str | None = None  # cron: systemd OnCalendar= expression
    concurrency: Concurrency | None = None  # cron: a run due while one runs (None: forbid)
    max_runs: int | None = None  # cron, concurrency allow: runs of a slot at once (else None)
    scaling: Scaling | None = None  # service: count follows load within bounds
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    secrets: tuple[Secret, ...] = ()
    ports: tuple[Port, ...] = ()  # named ports, in spec order (the first one is $PORT)
    placement: Placement | None = None  # None: the defaults (movable)

    @property
    def movable(self) -> bool:
        """May be moved off a node under pressure (a drain or a lost node moves it anyway)."""
        return self.placement is None or self.placement.movable

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["service"] and data["service"]["lb"] is None:
            del data["service"]["lb"]  # specs without a balancer keep the digests they had
        for optional in ("concurrency", "max_runs", "scaling", "placement"):
            if data[optional] is None:
                del data[optional]  # likewise specs that do not set them
        if not data["ports"]:
            del data["ports"]  # specs without named ports keep the digests they had
        if data["stop"]["drain"] is None:
            del data["stop"]["drain"]  # nor do specs that leave the drain to the default
        return data

    @property
    def dynamic_labels(self) -> tuple[str, ...]:
        """Labels of the ports the scheduler picks per instance, in spec order."""
        return tuple(p.label for p in self.ports if p.static is None)

    def static_ports(self) -> tuple[int, ...]:
        """The fixed ports every instance listens on: one holder per node and port."""
        fixed = {p.static for p in self.ports if p.static is not None}
        if self.service is not None and isinstance(self.service.port, int):
            fixed.add(self.service.port)
        return tuple(sorted(fixed))

    def port_numbers(self, assigned: Mapping[str, int]) -> dict[str, int]:
        """label -> port of one instance, in spec order: static labels from the spec,
        dynamic ones from what the scheduler assigned (`assigned`, the slot record's)."""
        out = {}
        for p in self.ports:
            number = p.static if p.static is not None else assigned.get(p.label)
            if number is None:
                raise ValueError(f"job {self.name}: no port assigned for label {p.label!r}")
            out[p.label] = number
        return out

    def resolve_port(self, ref: int | str | None, assigned: Mapping[str, int]) -> int | None:
        """service.port or health.port (a number or a label) as the instance's port number."""
        if ref is None or isinstance(ref, int):
            return ref
        return self.port_numbers(assigned)[ref]

    def digest(self) -> str:
        """Stable hash of the whole spec (the job's version)."""
        return _digest(self.to_dict())

    def runtime_digest(self) -> str:
        """Hash of what needs a restart to change: a different value means replace, not update
        in place (resources alone can change live)."""
        d = self.to_dict()
        # ports: the instance binds them, so a change restarts it; optional fields a spec
        # does not set are absent from d (to_dict), which keeps older specs' digests
        keys = ("runtime", "kind", "schedule", "stop", "health", "service", "restart", "secrets",
                "concurrency", "max_runs", "ports")
        if d["service"]:
            d["service"].pop("lb", None)  # the balancer is not the instance's: no restart
        d["stop"].pop("drain", None)  # the stopper waits, not the instance: no restart
        return _digest({k: d[k] for k in keys if k in d})


def _digest(data: dict) -> str:
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]
