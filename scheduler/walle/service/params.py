"""Job spec -> the module arguments of one instance (pure; no I/O).

The executor hands these dicts to the playbooks unchanged: `place.yml` passes `slice` to
walle_slice, `workload` to walle_workload and `service` to walle_consul_service. Keys whose
value is unset are left out, so the modules' own defaults apply. See docs/executor.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from walle import naming
from walle.adapters.consul.services import check_options
from walle.images import archive
from walle.jobspec.model import JobSpec

DEFAULT_CONSUL_ADDR = "http://127.0.0.1:8500"
# Seconds between an instance leaving the pool (its Consul registration removed) and its stop
# signal, when the job sets no stop.drain: HAProxy (roles/lb) asks Consul DNS every second and
# keeps a server gone from the answers for walle_lb_hold_obsolete (2 s) before it sends it
# nothing more; the rest lets requests already sent finish. docs/lb.md.
DEFAULT_DRAIN_S = 5.0
# /proc/devices names: major 195 "nvidia" covers /dev/nvidia<N> and /dev/nvidiactl;
# "nvidia-uvm" covers /dev/nvidia-uvm and /dev/nvidia-uvm-tools.
GPU_SHARED_DEVICES = ("/dev/nvidiactl rw", "char-nvidia-uvm rw")


class GrantLike(Protocol):
    """What the placement core grants one instance (walle.core's Grant has these fields)."""

    cpu_weight: int
    cpu_quota_percent: int | None
    memory_min: int
    memory_high: int | None
    memory_max: int | None


def instance_vars(
    spec: JobSpec,
    slot: int,
    node_address: str,
    grant: GrantLike,
    consul_addr: str = DEFAULT_CONSUL_ADDR,
    *,
    gpu_indices: Sequence[int] | None = None,
    consul_auth: Mapping[str, str] | None = None,
    image: Mapping[str, str] | None = None,
    ports: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Everything place.yml needs for one instance: `instance` (identity and what to wait
    for), `slice`, `workload`, `service` (None when the spec has no service) and, for a job
    with runtime.image, `image` (image_args of the image the store resolved it to). `ports`:
    the dynamic ports the core assigned the instance, label -> port (its slot record's)."""
    _check_slot(spec, slot)
    if (spec.runtime.image is None) != (image is None):
        raise ValueError(f"image: job {spec.name} has runtime.image {spec.runtime.image!r}; "
                         "pass image_args of its resolved digest exactly when it has one")
    out = {
        "instance": instance_identity(spec, slot),
        "slice": slice_args(spec, slot, grant, gpu_indices=gpu_indices),
        "workload": workload_args(spec, slot, gpu_indices=gpu_indices, ports=ports),
        "service": service_args(spec, slot, node_address, consul_addr, consul_auth=consul_auth,
                                ports=ports),
    }
    if image is not None:
        out["image"] = dict(image)
        out["workload"]["image"] = image["dir"]
    return out


def image_args(digest: str, src: str) -> dict[str, str]:
    """place_instance.yml's `image`: the archive on the control side (`src`, a path the image
    store made from the digest) and the node's cache directory (`dir`, relative to
    walle_workload's image_store) it is unpacked into once and shared by instances."""
    return {"digest": digest, "dir": archive.cache_dir_name(digest), "src": src}


def consul_auth(token_file: str | None = None, ca_file: str | None = None) -> dict[str, str]:
    """walle_consul_service's ACL/TLS options. Both are paths ON THE NODE (the consul role
    installs them): the module reads the token there, so no token ever travels through the
    scheduler's playbook variables or ansible-runner's artifacts. Empty values are left out."""
    out = {}
    for field, option, path in (("token_file", "token_file", token_file),
                                ("ca_file", "ca_path", ca_file)):
        if path and not path.startswith("/"):
            raise ValueError(f"{field}: {path!r} is not an absolute path on the nodes; use the "
                             "consul role's path, e.g. /etc/walle/consul-token")
        if path:
            out[option] = path
    return out


def batch_commit_args(job: str, slot: int, node: str, attempt: str, consul_addr: str,
                      consul_auth: Mapping[str, str] | None = None) -> dict[str, Any]:
    """walle_workload's `commit` for a batch instance: where its node records a successful
    run (walle/done/<job>/<slot>), with the placement (`attempt`) it ran. The token and CA
    are node paths (consul_auth), read on the node by walle-batch-commit as root."""
    return {"consul_addr": consul_addr, "key": naming.done_key(job, slot), "node": node,
            "attempt": attempt, **(consul_auth or {})}


def cron_history_args(job: str, slot: int, node: str, consul_addr: str,
                      consul_auth: Mapping[str, str] | None = None) -> dict[str, Any]:
    """walle_workload's `history` for a cron instance: where its node appends each run
    (walle/runs/<job>/<slot>, read by `walle status`). Token and CA are node paths, read on
    the node by walle-cron-record as root."""
    return {"consul_addr": consul_addr, "key": naming.runs_key(job, slot), "node": node,
            **(consul_auth or {})}


def instance_identity(spec: JobSpec, slot: int) -> dict[str, Any]:
    """Names the playbooks and the result parser key on. `wait_unit` is the unit that must be
    active after placement (none for batch jobs, which may finish at once)."""
    wait_unit = {
        "service": naming.service_unit(spec.name, slot),
        "cron": naming.timer_unit(spec.name, slot),
        "batch": None,
    }[spec.kind]
    return {
        "id": naming.instance_id(spec.name, slot),
        "job": spec.name,
        "slot": slot,
        "unit": naming.unit_stem(spec.name, slot),
        "wait_unit": wait_unit,
        "digest": spec.digest(),
    }


def slice_args(
    spec: JobSpec, slot: int, grant: GrantLike, *, gpu_indices: Sequence[int] | None = None
) -> dict[str, Any]:
    """walle_slice arguments. Also what grants.yml re-applies live: always the full set, so a
    grant change never drops another directive from the slice file."""
    res = spec.resources
    args: dict[str, Any] = {
        "name": naming.instance_slice(spec.name, slot),
        "state": "present",
        "description": f"walle {spec.name} slot {slot}",
        "cpu_weight": grant.cpu_weight,
        "cpu_quota": grant.cpu_quota_percent,
        "memory_min": grant.memory_min,
        "memory_high": grant.memory_high,
        "memory_max": grant.memory_max,
        "io_weight": res.io_weight,
        "tasks_max": res.tasks_max,
    }
    if res.gpus > 0:
        args["device_policy"] = "closed"
        args["device_allow"] = gpu_device_allow(res.gpus, gpu_indices)
    return _without_none(args)


def gpu_device_allow(gpus: int, gpu_indices: Sequence[int] | None) -> list[str]:
    """DeviceAllow= entries. With the indices the node assigned, only those GPUs; without
    them (the core does not assign GPU indices yet) every GPU of the node."""
    if gpu_indices is None:
        return ["char-nvidia rw", *GPU_SHARED_DEVICES]
    if len(gpu_indices) != gpus:
        raise ValueError(
            f"gpu_indices: {len(gpu_indices)} given for resources.gpus={gpus}; pass one index "
            "per GPU the spec asks for"
        )
    return [f"/dev/nvidia{i} rw" for i in sorted(gpu_indices)] + list(GPU_SHARED_DEVICES)


def workload_args(
    spec: JobSpec, slot: int, *, gpu_indices: Sequence[int] | None = None,
    ports: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """walle_workload arguments. The description carries the runtime digest, so the unit text
    changes (and the unit restarts) exactly when the spec says a replace is needed; the
    environment carries the instance's ports, so it restarts when they change too."""
    rt = spec.runtime
    env = _workload_env(spec, slot, gpu_indices, spec.port_numbers(ports or {}))
    args: dict[str, Any] = {
        "name": naming.unit_stem(spec.name, slot),
        "slice": naming.instance_slice(spec.name, slot),
        "state": "started",
        "kind": spec.kind,
        "runtime": rt.kind,
        "command": rt.command,
        "args": list(rt.args),
        "env": env,
        "user": rt.user,
        "working_dir": rt.working_dir,
        **sandbox_args(spec, gpu_indices),
        "stop_signal": spec.stop.signal,
        "stop_timeout": spec.stop.timeout,
        "pre_stop": list(spec.stop.pre_stop) or None,
        "description": f"walle {spec.name} slot {slot} runtime {spec.runtime_digest()}",
    }
    if rt.kind == "exec" and spec.ports:  # `${WALLE_PORT_HTTP}` in args: the port
        args["expand_env"] = [port_variable(p.label) for p in spec.ports]
    if spec.kind == "service":
        args["restart"] = spec.restart
    elif spec.kind == "batch":
        args["restart"] = "on-failure"
        args["retries"] = spec.retries
    else:
        args["schedule"] = spec.schedule
        args["retries"] = spec.retries
        args["concurrency"] = spec.concurrency
        args["max_runs"] = spec.max_runs  # allow only (None otherwise: dropped)
    return _without_none(args)


def sandbox_args(spec: JobSpec, gpu_indices: Sequence[int] | None = None) -> dict[str, Any]:
    """walle_workload's sandbox options: what the job asked for (privilege, capabilities,
    JIT) and the devices its grant gives (the slice's GPU list, so PrivateDevices= goes).
    Whether the job may have them is the scheduler's policy (service/policy.py)."""
    rt = spec.runtime
    args: dict[str, Any] = {}
    if rt.privileged:
        args["privileged"] = True
    if rt.capabilities:
        args["capabilities"] = list(rt.capabilities)
    if rt.jit:
        args["write_execute"] = True
    if spec.resources.gpus > 0 and rt.kind == "exec" and not rt.privileged:
        args["device_allow"] = gpu_device_allow(spec.resources.gpus, gpu_indices)
    return args


def service_args(
    spec: JobSpec, slot: int, node_address: str, consul_addr: str = DEFAULT_CONSUL_ADDR,
    *, consul_auth: Mapping[str, str] | None = None, ports: Mapping[str, int] | None = None,
) -> dict[str, Any] | None:
    """walle_consul_service arguments, or None when the job is not a discoverable service.
    The registration (and so DNS SRV) carries the instance's own port: service.port, or the
    port of the label it names."""
    if spec.service is None:
        return None
    _check_node_address(node_address)
    assigned = ports or {}
    port = spec.resolve_port(spec.service.port, assigned)
    args: dict[str, Any] = {
        "service_id": naming.instance_id(spec.name, slot),
        "name": spec.service.name,
        "address": node_address,
        "port": port,
        "tags": list(spec.service.tags),
        "meta": {
            "walle_job": spec.name,
            "walle_slot": str(slot),
            "walle_digest": spec.digest(),
            "walle_runtime": spec.runtime_digest(),  # adoption: replace, or update in place
            **ports_meta(spec, assigned),
        },
        "consul_addr": consul_addr,
        **(consul_auth or {}),
        "state": "present",
    }
    if spec.health is not None:
        health = replace(spec.health, port=spec.resolve_port(spec.health.port, assigned))
        args.update(check_options(health, node_address, port))
    return _without_none(args)


PORTS_META = "walle_ports"  # "http=20001,admin=20417": what a new leader adopting it keeps


def ports_meta(spec: JobSpec, assigned: Mapping[str, int]) -> dict[str, str]:
    """The service meta recording an instance's dynamic ports (adoption reads them back)."""
    numbers = spec.port_numbers(assigned)
    dynamic = [f"{label}={numbers[label]}" for label in sorted(spec.dynamic_labels)]
    return {PORTS_META: ",".join(dynamic)} if dynamic else {}


def ports_from_meta(meta: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """ports_meta read back, (label, port) by label; anything malformed reads as none."""
    out = []
    for item in (meta.get(PORTS_META) or "").split(","):
        label, _, number = item.partition("=")
        if not (label and number.isdigit() and 0 < int(number) < 65536):
            return ()
        out.append((label, int(number)))
    return tuple(sorted(out))


def port_variable(label: str) -> str:
    """The environment variable carrying a labelled port: WALLE_PORT_<LABEL>."""
    return f"WALLE_PORT_{label.upper()}"


def drain_of(spec: JobSpec | None) -> float:
    """Seconds an instance of `spec` stays out of the pool before its stop signal (stop.drain,
    else DEFAULT_DRAIN_S; also for a job no longer known, e.g. after `walle stop`)."""
    if spec is None or spec.stop.drain is None:
        return DEFAULT_DRAIN_S
    return spec.stop.drain


def leave_args(job: str, slot: int, consul_addr: str = DEFAULT_CONSUL_ADDR, *,
               consul_auth: Mapping[str, str] | None = None,
               drain: float = DEFAULT_DRAIN_S) -> dict[str, Any]:
    """Leaving the pool before a stop or an in-place restart: `service` deregisters the
    instance (walle_consul_service state=absent), then the playbook waits `drain` seconds,
    but only if a registration was actually removed."""
    return {
        "service": {"service_id": naming.instance_id(job, slot), "state": "absent",
                    "consul_addr": consul_addr, **(consul_auth or {})},
        "drain": drain,
    }


def stop_vars(job: str, slot: int, consul_addr: str = DEFAULT_CONSUL_ADDR, *,
              consul_auth: Mapping[str, str] | None = None,
              drain: float = DEFAULT_DRAIN_S) -> dict[str, Any]:
    """What stop.yml needs for one instance. Only names (and the drain): stopping needs no
    spec, so instances found on a node (adoption, orphans) can be stopped too. stop.yml
    deregisters (`service`), waits the drain, then walle_workload state=absent stops the timer
    and service (ExecStop=, KillSignal=, TimeoutStopSec= apply) before removing them."""
    stem = naming.unit_stem(job, slot)
    slice_name = naming.instance_slice(job, slot)
    return {
        "instance": {"id": naming.instance_id(job, slot), "job": job, "slot": slot,
                     "unit": stem},
        "slice": {"name": slice_name, "state": "absent"},
        "workload": {"name": stem, "state": "absent"},
        **leave_args(job, slot, consul_addr, consul_auth=consul_auth, drain=drain),
    }


def _workload_env(spec: JobSpec, slot: int, gpu_indices: Sequence[int] | None,
                  ports: Mapping[str, int]) -> dict:
    env = {"WALLE_JOB": spec.name, "WALLE_SLOT": str(slot)}
    if spec.service is not None and spec.service.port is not None:
        env["WALLE_PORT"] = str(spec.resolve_port(spec.service.port, ports))
    for label, port in ports.items():
        env[port_variable(label)] = str(port)
    if ports:
        env["PORT"] = str(next(iter(ports.values())))  # the first label's, by convention
    if gpu_indices is not None:
        # the driver's indices are the /dev/nvidia<i> minors, in PCI bus order; CUDA's own
        # default order (fastest first) may differ, so pin it
        visible = ",".join(str(i) for i in sorted(gpu_indices))
        env.update(CUDA_VISIBLE_DEVICES=visible, NVIDIA_VISIBLE_DEVICES=visible,
                   CUDA_DEVICE_ORDER="PCI_BUS_ID")
    env.update(dict(spec.runtime.env))  # the spec's own values win
    return env


def _check_slot(spec: JobSpec, slot: int) -> None:
    if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < spec.count:
        raise ValueError(
            f"slot: {slot!r} is outside job {spec.name}; use 0..{spec.count - 1} (count-1)"
        )


def _check_node_address(address: str) -> None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if address in ("localhost", "") or address.startswith("localhost."):
            raise ValueError(
                f"node_address: {address!r} is not reachable from other nodes; pass the "
                "node's own address"
            ) from None
        return
    if ip.is_loopback or ip.is_unspecified:
        raise ValueError(
            f"node_address: {address} is not reachable from other nodes; pass the node's "
            "own address (its ansible_host)"
        )


def _without_none(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None}
