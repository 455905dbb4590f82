"""Turn operator input (YAML, JSON or plain data) into a validated, immutable `JobSpec`.

The parser reports every problem of a spec in one pass, each with the path of the field
(`resources.cpu`, `stop.pre_stop[1]`) and what is allowed there. Spec values end up in systemd
unit files and Consul, so this is the single place that refuses control characters in strings,
relative or unnormalised paths and unsafe names; the unit renderer still escapes `%` and quotes.
"""


from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import replace

from walle.jobspec.grammar import (
    ATTRIBUTE,
    BALANCER_MODES,
    CALENDAR_CHARS,
    CALENDAR_DATE,
    CALENDAR_SHORTHANDS,
    CALENDAR_TIME,
    CAPABILITIES,
    CHECK_TYPES,
    CONCURRENCY_POLICIES,
    CONTAINER_KINDS,
    CREDENTIAL_NAME,
    DATASET,
    DEFAULT_MAX_RUNS,
    DEFAULT_PORT_RANGE,
    DNS_LABEL,
    DNS_TAG,
    ENV_KEY,
    JOB_KINDS,
    MAX_COUNT,
    MAX_PORTS,
    MAX_RUNS,
    OPERATORS,
    PORT_LABEL,
    RESTART_POLICIES,
    ROOT,
    RUNTIME_KINDS,
    SCALING_METRICS,
    SECRET_SOURCES,
    STORE_PATH,
    STRATEGIES,
    TIMEZONE,
    USER,
    WEEKDAY,
    grammar,
)
from walle.jobspec.model import (
    Balancer,
    Constraint,
    Discovery,
    HealthCheck,
    JobSpec,
    Placement,
    Port,
    Range,
    Resources,
    Runtime,
    Scaling,
    Secret,
    StopPolicy,
    UpdatePolicy,
)
from walle.jobspec.readers import (
    SpecError,
    _abs_path,
    _alts,
    _argument,
    _at,
    _boolean,
    _by_grammar,
    _choice,
    _cores,
    _describe,
    _did_you_mean,
    _duration,
    _fields,
    _integer,
    _list_of,
    _num,
    _optional,
    _program,
    _range,
    _Report,
    _required,
    _scalar_text,
    _show,
    _size,
    _text,
    _url_path,
)
from walle.jobspec.regex import compile_pattern

# ---------------------------------------------------------------- entry point

def parse_spec(data: object, source: str = "<input>") -> JobSpec:
    """Validate plain data (dicts, lists, strings, numbers) into a JobSpec."""
    report = _Report()
    spec = _job(report, data)
    if report.problems or spec is None:
        raise SpecError(report.problems, source)
    return spec


# ---------------------------------------------------------------- the job




TOP_KEYS = ("name", "kind", "count", "priority", "strategy", "resources", "runtime",
            "constraints", "data", "health", "stop", "service", "restart", "retries",
            "schedule", "update", "secrets", "concurrency", "scaling", "ports", "placement")


def _job(r: _Report, data: object) -> JobSpec | None:
    if data is None:
        r.add(ROOT, "the spec is empty: write a mapping with at least name, kind, resources "
                    "and runtime")
        return None
    f = _fields(r, data, ROOT, TOP_KEYS)
    if f is None:
        return None
    name = _required(r, f, "name", _job_name, "a DNS label such as 'web'")
    kind = _required(r, f, "kind", _choice(JOB_KINDS), f"one of {_alts(JOB_KINDS)}")
    resources = _required(r, f, "resources", _resources, "a mapping with at least cpu and memory")
    runtime = _required(r, f, "runtime", _runtime, "a mapping with type and command or image")
    ports = _optional(r, f, "ports", _ports)
    labels = _raw_labels(f.get("ports"))
    service = _optional(r, f, "service", _service(name, labels))
    raw_service = f.get("service")
    service_has_port = isinstance(raw_service, Mapping) and raw_service.get("port") is not None
    health = _optional(r, f, "health", _health(service_has_port, labels))
    fields = {
        "count": _optional(r, f, "count", _integer(0, MAX_COUNT)),
        "priority": _optional(r, f, "priority", _integer(0, 100)),
        "strategy": _optional(r, f, "strategy", _choice(STRATEGIES)),
        "constraints": _optional(r, f, "constraints", _list_of(_constraint)),
        "data": _optional(r, f, "data", _list_of(_dataset)),
        "stop": _optional(r, f, "stop", _stop),
        "restart": _optional(r, f, "restart", _restart),
        "retries": _optional(r, f, "retries", _integer(0, 100)),
        "schedule": _optional(r, f, "schedule", _calendar),
        "concurrency": _optional(r, f, "concurrency", _concurrency),
        "scaling": _optional(r, f, "scaling", _scaling),
        "update": _optional(r, f, "update", _update),
        "secrets": _optional(r, f, "secrets", _secrets),
        "ports": ports,
        "placement": _optional(r, f, "placement", _placement),
    }
    _check_kind_rules(r, f, kind)
    _check_scaling_count(r, fields["scaling"], fields["count"], "count" in f)
    _check_secret_runtime(r, f)
    _check_concurrency_runtime(r, fields["concurrency"], runtime)
    if r.problems:
        return None
    if fields["concurrency"] is not None:
        fields["concurrency"], fields["max_runs"] = fields["concurrency"]
    present = {k: v for k, v in fields.items() if v is not None}
    if health and health.port is None and health.type in ("http", "tcp"):
        health = replace(health, port=service.port)  # checked above: the service has a port
    return JobSpec(name=name, kind=kind, resources=resources, runtime=runtime, health=health,
                   service=service, **present)


def _check_kind_rules(r: _Report, f: dict, kind: str | None) -> None:
    if kind == "cron" and "schedule" not in f:
        r.add("schedule", "required for cron jobs: a systemd OnCalendar expression such as "
                          "'*-*-* 02:00:00' or 'daily'")
    if kind in ("service", "batch") and "schedule" in f:
        r.add("schedule", f"only cron jobs have a schedule; remove it or set kind: cron "
                          f"(this job is {kind})")
    if kind == "service" and "retries" in f:
        r.add("retries", "only batch and cron jobs have retries; services use restart")
    if kind in ("batch", "cron") and "scaling" in f:
        r.add("scaling", f"only services scale with load; remove it (this job is {kind}: "
                         "set its count)")
    if kind in ("service", "batch") and "concurrency" in f:
        r.add("concurrency", f"only cron jobs have a concurrency policy; remove it or set "
                             f"kind: cron (this job is {kind})")
    stop = f.get("stop")
    if kind == "cron" and isinstance(stop, Mapping) and stop.get("pre_stop"):
        r.add("stop.pre_stop", "cron jobs run as a oneshot service, which has no graceful stop "
                               "hook; remove it (stop.signal and stop.timeout still apply)")


def _ports(r: _Report, value: object, path: str) -> tuple[Port, ...] | None:
    """Named ports: unique labels; a static port outside the dynamic range, held once."""
    ports = _list_of(_port)(r, value, path)
    if ports is None:
        return None
    if len(ports) > MAX_PORTS:
        r.add(path, f"{len(ports)} ports; a job has at most {MAX_PORTS}")
        return None
    before = len(r.problems)
    for n, port in enumerate(ports):
        first = next(m for m, p in enumerate(ports) if p.label == port.label)
        if first < n:
            r.add(f"{path}[{n}].label", f"{port.label!r} is already the label of "
                                        f"{path}[{first}]; labels must be unique")
        same = [m for m, p in enumerate(ports[:n]) if port.static and p.static == port.static]
        if same:
            r.add(f"{path}[{n}].static", f"port {port.static} is already {path}[{same[0]}]'s; "
                                         "each static port once")
    return ports if len(r.problems) == before else None


def _port(r: _Report, value: object, path: str) -> Port | None:
    f = _fields(r, value, path, ("label", "static"))
    if f is None:
        return None
    label = _required(r, f, "label", _port_label, "a lowercase name such as 'http'", path)
    static = _optional(r, f, "static", _integer(1, 65535), path)
    low, high = DEFAULT_PORT_RANGE
    if static is not None and low <= static <= high:
        r.add(_at(path, "static"), f"port {static} is inside the range {low}-{high} the "
                                   "scheduler assigns dynamic ports from; pick a port outside "
                                   "it, or drop static to get a dynamic port")
        return None
    if label is None or ("static" in f and static is None):
        return None
    return Port(label=label, static=static)


def _port_label(r: _Report, value: object, path: str) -> str | None:
    text = _text(r, value, path)
    if text is not None and not PORT_LABEL.fullmatch(text):
        r.add(path, f"{_show(text)} is not a valid port label: 1-32 characters a-z, 0-9 and "
                    "'_', starting with a letter (the instance sees WALLE_PORT_<LABEL>)")
        return None
    return text


def _raw_labels(value: object) -> tuple[str, ...]:
    """The labels `ports` names, read leniently so that a bad entry there does not also make
    every reference to a label an error (the entry's own problem is reported)."""
    if not isinstance(value, list | tuple):
        return ()
    return tuple(p["label"] for p in value
                 if isinstance(p, Mapping) and isinstance(p.get("label"), str))


def _port_ref(labels: tuple[str, ...]) -> Callable:
    """service.port or health.port: a port number, or the label of one of the job's ports."""
    def parse(r: _Report, value: object, path: str) -> int | str | None:
        if isinstance(value, str):
            if value in labels:
                return value
            known = f"one of {_alts(labels)}" if labels else "none: add `ports: [{label: ...}]`"
            r.add(path, f"{_show(value)} is not a label of this job's ports ({known}); use a "
                        f"port number or a label{_did_you_mean(value, labels)}")
            return None
        return _integer(1, 65535)(r, value, path)

    return parse


def _job_name(r: _Report, value: object, path: str) -> str | None:
    text = _text(r, value, path)
    if text is None:
        return None
    if not (DNS_LABEL.fullmatch(text) and len(text) <= 40 and not text.endswith("-")
            and "--" not in text):
        r.add(path, f"{_show(text)} is not a valid job name: use 1-40 characters a-z, 0-9 and "
                    "'-', starting with a letter, not ending with '-', without '--'")
        return None
    return text


# ---------------------------------------------------------------- sections


def _resources(r: _Report, value: object, path: str) -> Resources | None:
    f = _fields(r, value, path, ("cpu", "memory", "disk", "io_weight", "gpus", "tasks_max"))
    if f is None:
        return None
    cpu = _required(r, f, "cpu", _cpu_range, "cores as a number or a 'min-max' range",
                    path)
    memory = _required(r, f, "memory", _memory_range, "a size such as '256M' or a range "
                       "'128M-512M'", path)
    extra = {
        "disk": _optional(r, f, "disk", _size, path),
        "io_weight": _optional(r, f, "io_weight", _integer(1, 10000), path),
        "gpus": _optional(r, f, "gpus", _integer(0, 64), path),
        "tasks_max": _optional(r, f, "tasks_max", _integer(1, 4_194_304), path),
    }
    if cpu is None or memory is None or None in (extra[k] for k in f if k in extra):
        return None
    return Resources(cpu=cpu, memory=memory, **{k: v for k, v in extra.items() if v is not None})


def _cpu_range(r: _Report, value: object, path: str) -> Range | None:
    rng = _range(r, value, path, _cores)
    if rng is not None and rng.min <= 0:
        r.add(path, "the minimum must be more than 0 cores (fractions such as 0.1 are fine)")
        return None
    return rng


def _memory_range(r: _Report, value: object, path: str) -> Range | None:
    rng = _range(r, value, path, _size)
    if rng is not None and rng.max <= 0:
        r.add(path, "the maximum must be more than 0 bytes (the minimum may be 0)")
        return None
    return rng


RUNTIME_KEYS = ("type", "command", "args", "env", "user", "working_dir", "image", "privileged",
                "capabilities", "jit")


def _runtime(r: _Report, value: object, path: str) -> Runtime | None:
    f = _fields(r, value, path, RUNTIME_KEYS)
    if f is None:
        return None
    kind = _optional(r, f, "type", _choice(RUNTIME_KINDS), path) or "exec"
    parts = {
        "command": _optional(r, f, "command", _program, path),
        "args": _optional(r, f, "args", _list_of(_argument), path),
        "env": _optional(r, f, "env", _env, path),
        "user": _optional(r, f, "user", _user, path),
        "working_dir": _optional(r, f, "working_dir", _abs_path, path),
        "image": _optional(r, f, "image", _image, path),
        "privileged": _optional(r, f, "privileged", _boolean, path),
        "capabilities": _optional(r, f, "capabilities", _capabilities, path),
        "jit": _optional(r, f, "jit", _boolean, path),
    }
    _check_privilege(r, f, kind, path)
    if "type" in f and f["type"] not in RUNTIME_KINDS:
        return None
    if kind == "exec" and "command" not in f:
        r.add(_at(path, "command"), "required for the exec runtime: an absolute path such as "
                                    "/usr/bin/python3")
    if kind == "exec" and "image" in f:
        r.add(_at(path, "image"), "only the container runtimes (nspawn, lxc) have an image; "
                                  "set type: nspawn or type: lxc, or remove it")
    if kind in CONTAINER_KINDS and "image" not in f:
        r.add(_at(path, "image"), f"required for the {kind} runtime: an image of the image "
                                  "store as NAME:VERSION (web:1.0) or NAME@sha256:HEX; see "
                                  "`walle image ls`")
    if kind == "lxc" and "user" in f:
        r.add(_at(path, "user"), "not for the lxc runtime: its command runs as the container's "
                                 "root, which the user namespace maps to an unprivileged uid "
                                 "on the node; remove user (or switch user inside the image)")
    if kind == "lxc" and "command" not in f:
        r.add(_at(path, "command"), "required for the lxc runtime: the program inside the "
                                    "image, an absolute path such as /usr/bin/python3 (an lxc "
                                    "instance is an application container; to boot the "
                                    "image's init use type: nspawn without a command)")
    if any(parts[k] is None for k in f if k in parts) or \
            ("command" not in f and kind in ("exec", "lxc")):
        return None
    return Runtime(kind=kind, **{k: v for k, v in parts.items() if v is not None})


def _check_privilege(r: _Report, f: dict, kind: str, path: str) -> None:
    """Root is asked for, never implied: `user: root` needs `privileged: true`. Whether a
    privileged job or a capability may run is the cluster's policy (the scheduler's
    --allow-privileged / --allow-capability), decided where the leader places."""
    if f.get("user") == "root" and f.get("privileged") is not True and kind == "exec":
        r.add(_at(path, "user"), "root is a privileged workload: set runtime.privileged: true "
                                 "(the cluster policy decides whether it may run), or remove "
                                 "user to run as a dynamic unprivileged user")
    if kind in CONTAINER_KINDS:
        for key in ("privileged", "capabilities", "jit"):
            if f.get(key):
                r.add(_at(path, key), f"only for the exec runtime; an {kind} container is "
                                      "confined by its user namespace")
    elif f.get("privileged") is True and f.get("capabilities"):
        r.add(_at(path, "capabilities"), "a privileged job already has every capability; "
                                         "drop capabilities or privileged")


def _image(r: _Report, value: object, path: str) -> str | None:
    """A versioned image of the control side's image store (docs/images.md): NAME:VERSION or
    NAME@sha256:HEX, never a host path. Whether it exists is checked where it is placed."""
    try:
        grammar.check_image_ref(value)
    except ValueError as err:
        r.add(path, f"{err}")
        return None
    return value


def _capabilities(r: _Report, value: object, path: str) -> tuple[str, ...] | None:
    caps = _list_of(_choice(CAPABILITIES))(r, value, path)
    return None if caps is None else tuple(sorted(set(caps)))


def _secrets(r: _Report, value: object, path: str) -> tuple[Secret, ...] | None:
    if not isinstance(value, Mapping):
        r.add(path, f"expected a mapping of NAME: {{consul: KEY}} or {{file: PATH}}, got "
                    f"{_describe(value)}")
        return None
    out, ok = [], True
    for name, source in value.items():
        if not (isinstance(name, str) and CREDENTIAL_NAME.fullmatch(name)):
            r.add(path, f"secret name {_show(name)} is not valid: 1-64 letters, digits, '_', "
                        "'.', '-', not starting with '.' or '-' (the app reads "
                        "$CREDENTIALS_DIRECTORY/<name>)")
            ok = False
            continue
        secret = _secret(r, name, source, _at(path, name))
        ok = ok and secret is not None
        out.append(secret)
    return tuple(sorted(out, key=lambda s: s.name)) if ok else None


def _secret(r: _Report, name: str, value: object, path: str) -> Secret | None:
    f = _fields(r, value, path, SECRET_SOURCES)
    if f is None:
        return None
    if not f and any(key not in SECRET_SOURCES for key in value):
        return None  # the unknown key is the problem, reported above
    if len(f) != 1:
        r.add(path, "give exactly one source: consul (a key under walle/secrets/) or file (a "
                    "path under the scheduler's secrets directory)")
        return None
    (source, raw), = f.items()
    text = _text(r, raw, _at(path, source))
    if text is None:
        return None
    if not STORE_PATH.fullmatch(text) or len(text) > 255:
        r.add(_at(path, source), f"{_show(text)} must be a relative path such as 'app/db' "
                                 "(letters, digits, '_', '.', '-' and '/'; no leading '/', "
                                 "no '..')")
        return None
    return Secret(name=name, source=source, path=text)


def _check_secret_runtime(r: _Report, f: dict) -> None:
    runtime = f.get("runtime")
    kind = runtime.get("type") if isinstance(runtime, Mapping) else None
    if f.get("secrets") and kind in CONTAINER_KINDS:
        r.add("secrets", "secrets are delivered as systemd credentials to the exec runtime "
                         f"only; the {kind} runtime cannot take them yet")


def _env(r: _Report, value: object, path: str) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(value, Mapping):
        r.add(path, f"expected a mapping of NAME: value, got {_describe(value)}")
        return None
    pairs, ok = [], True
    for key, val in value.items():
        if isinstance(key, str) and _text(r, key, path) is None:
            ok = False
            continue
        if not (isinstance(key, str) and ENV_KEY.fullmatch(key)):
            r.add(path, f"environment name {_show(key)} is not valid: use letters, digits and '_', "
                  "not starting with a digit")
            ok = False
            continue
        text = _scalar_text(r, val, _at(path, key))
        ok = ok and text is not None
        pairs.append((key, text))
    return tuple(sorted(pairs)) if ok else None


def _user(r: _Report, value: object, path: str) -> str | None:
    text = _text(r, value, path)
    if text is not None and not (USER.fullmatch(text) and len(text) <= 32):
        r.add(path, f"{_show(text)} is not a valid user name: up to 32 characters a-z, 0-9, "
                    "'_' and '-', starting with a letter or '_' (an optional '$' at the end)")
        return None
    return text


def _constraint(r: _Report, value: object, path: str) -> Constraint | None:
    f = _fields(r, value, path, ("attribute", "operator", "value"))
    if f is None:
        return None
    op = _required(r, f, "operator", _choice(OPERATORS), f"one of {_alts(OPERATORS)}", path)
    if op is None:
        return None
    if op == "distinct_hosts":
        return _distinct_hosts(r, f, path)
    attribute = _required(r, f, "attribute", _attribute, "a node attribute: name, zone, rack "
                          "or label.<key>", path)
    val = _required(r, f, "value", _value_reader(op), VALUE_HINTS[op], path)
    if attribute is None or val is None:
        return None
    return Constraint(attribute, op, val)


def _distinct_hosts(r: _Report, f: dict, path: str) -> Constraint | None:
    """One instance per node: stored as attribute "name" (the node name) with no value."""
    bad = [k for k in ("attribute", "value") if k in f and (k == "value" or f[k] != "name")]
    for key in bad:
        r.add(_at(path, key), "distinct_hosts takes no value (and no attribute other than "
                              "'name'): it puts every instance on a different node")
    return None if bad else Constraint("name", "distinct_hosts")


def _attribute(r: _Report, value: object, path: str) -> str | None:
    text = _text(r, value, path)
    if text is not None and not ATTRIBUTE.fullmatch(text):
        hint = _did_you_mean(text, ("name", "zone", "rack"))
        r.add(path, f"unknown node attribute {_show(text)}; use name, zone, rack or "
                    f"label.<key>{hint}")
        return None
    return text


def _regex(r: _Report, value: object, path: str) -> str | None:
    text = _scalar_text(r, value, path)
    if text is None:
        return None
    try:
        compile_pattern(text)
    except ValueError as exc:
        r.add(path, str(exc))
        return None
    return text


def _string_list(r: _Report, value: object, path: str) -> tuple[str, ...] | None:
    items = _list_of(_scalar_text)(r, value, path)
    if items is not None and not items:
        r.add(path, "expected a non-empty list of values")
        return None
    return items


VALUE_HINTS = {
    "eq": "a string", "ne": "a string", "in": "a non-empty list of strings",
    "not_in": "a non-empty list of strings", "regex": "a regular expression",
    "max_per": "a whole number of at least 1 (instances per attribute value)",
}


def _value_reader(op: str) -> Callable:
    if op in ("in", "not_in"):
        return _string_list
    return {"regex": _regex, "max_per": _integer(1, 1000)}.get(op, _scalar_text)


def _dataset(r: _Report, value: object, path: str) -> str | None:
    text = _text(r, value, path)
    if text is not None and not (DATASET.fullmatch(text) and len(text) <= 64):
        r.add(path, f"{_show(text)} is not a valid dataset name: up to 64 characters of "
                    "letters, digits, '_', '.' and '-', starting with a letter or digit")
        return None
    return text


HEALTH_KEYS = ("type", "path", "port", "interval", "timeout", "ttl", "deregister_after")
HEALTH_ONLY = {"path": ("http",), "port": ("http", "tcp"), "ttl": ("ttl",)}
SCRIPT_CHECK_REFUSED = (
    "script checks are not supported: Consul would run the command from the Consul agent, as "
    "its user, outside the instance's sandbox and limits; use an http, tcp or ttl check (a ttl "
    "check lets the workload itself report its health)")


def _health(service_has_port: bool, labels: tuple[str, ...] = ()) -> Callable:
    def parse(r: _Report, value: object, path: str) -> HealthCheck | None:
        if isinstance(value, Mapping) and value.get("type") == "script":
            r.add(_at(path, "type"), SCRIPT_CHECK_REFUSED)
            return None
        f = _fields(r, value, path, HEALTH_KEYS)
        if f is None:
            return None
        kind = _required(r, f, "type", _choice(CHECK_TYPES), f"one of {_alts(CHECK_TYPES)}",
                         path)
        parts = {
            "path": _optional(r, f, "path", _url_path, path),
            "port": _optional(r, f, "port", _port_ref(labels), path),
            "interval": _optional(r, f, "interval", _duration(0.1, 86400), path),
            "timeout": _optional(r, f, "timeout", _duration(0.1, 3600), path),
            "ttl": _optional(r, f, "ttl", _duration(1, 86400), path),
            "deregister_after": _optional(r, f, "deregister_after", _duration(60, 7 * 86400),
                                          path),
        }
        if kind is None or any(parts[k] is None for k in f if k in parts):
            return None
        if not _health_fits(r, f, kind, path, parts, service_has_port):
            return None
        return HealthCheck(type=kind, **{k: v for k, v in parts.items() if v is not None})

    return parse


def _health_fits(r: _Report, f: dict, kind: str, path: str, parts: dict,
                 service_has_port: bool) -> bool:
    before = len(r.problems)
    for key, kinds in HEALTH_ONLY.items():
        if key in f and kind not in kinds:
            r.add(_at(path, key), f"only {_alts(kinds)} checks have {key}; this check is {kind}")
    if kind in ("http", "tcp") and "port" not in f and not service_has_port:
        r.add(_at(path, "port"), f"required for {kind} checks: set health.port or service.port")
    if kind == "ttl" and "ttl" not in f:
        r.add(_at(path, "ttl"), "required for ttl checks: a duration such as '30s'")
    return len(r.problems) == before


def _stop(r: _Report, value: object, path: str) -> StopPolicy | None:
    f = _fields(r, value, path, ("signal", "timeout", "pre_stop", "drain"))
    if f is None:
        return None
    parts = {
        "signal": _optional(r, f, "signal", _signal, path),
        "timeout": _optional(r, f, "timeout", _duration(0.001, 86400), path),
        "pre_stop": _optional(r, f, "pre_stop", _argv, path),
        "drain": _optional(r, f, "drain", _duration(0, 600), path),
    }
    if any(parts[k] is None for k in f):
        return None
    return StopPolicy(**{k: v for k, v in parts.items() if v is not None})


def _signal(r: _Report, value: object, path: str) -> str | None:
    text = _text(r, value, path)
    return None if text is None else _by_grammar(r, grammar.check_signal, text, path)


def _argv(r: _Report, value: object, path: str) -> tuple[str, ...] | None:
    items = _list_of(_argument)(r, value, path)
    if items and _program(r, items[0], f"{path}[0]") is None:
        return None
    return items


def _service(job_name: str | None, labels: tuple[str, ...] = ()) -> Callable:
    def parse(r: _Report, value: object, path: str) -> Discovery | None:
        f = _fields(r, value, path, ("name", "port", "tags", "lb"))
        if f is None:
            return None
        name = _optional(r, f, "name", _service_name, path) or job_name
        port = _optional(r, f, "port", _port_ref(labels), path)
        tags = _optional(r, f, "tags", _list_of(_tag), path)
        lb = _optional(r, f, "lb", _balancer, path)
        if "lb" in f and "port" not in f:
            r.add(_at(path, "port"), "required when service.lb is set: the port HAProxy sends "
                                     "traffic to on each instance")
            return None
        if name is None or any(x is None for x, k in ((port, "port"), (tags, "tags"), (lb, "lb"))
                               if k in f):
            return None
        return Discovery(name=name, port=port, tags=tags or (), lb=lb)

    return parse


def _balancer(r: _Report, value: object, path: str) -> Balancer | None:
    f = _fields(r, value, path, ("port", "mode"))
    if f is None:
        return None
    port = _required(r, f, "port", _integer(1, 65535), "the port clients connect to on the "
                     "load balancer, such as 80", path)
    mode = _optional(r, f, "mode", _choice(BALANCER_MODES), path)
    if port is None or ("mode" in f and mode is None):
        return None
    return Balancer(port=port, mode=mode or "http")


def _service_name(r: _Report, value: object, path: str) -> str | None:
    text = _text(r, value, path)
    if text is not None and not (DNS_LABEL.fullmatch(text) and len(text) <= 63
                                 and not text.endswith("-")):
        r.add(path, f"{_show(text)} is not a valid service name: a DNS label of a-z, 0-9 and "
                    "'-', starting with a letter, at most 63 characters")
        return None
    return text


def _tag(r: _Report, value: object, path: str) -> str | None:
    text = _scalar_text(r, value, path)
    if text is not None and not (DNS_TAG.fullmatch(text) and len(text) <= 63):
        r.add(path, f"{_show(text)} is not a valid tag: letters, digits and '-', starting "
                    "with a letter or digit, at most 63 characters (tags appear in DNS names)")
        return None
    return text


def _restart(r: _Report, value: object, path: str) -> str | None:
    if value is False:  # YAML 1.1 reads a bare `no` as false
        return "no"
    return _choice(RESTART_POLICIES)(r, value, path)


def _update(r: _Report, value: object, path: str) -> UpdatePolicy | None:
    f = _fields(r, value, path, ("max_parallel", "health_timeout", "auto_rollback"))
    if f is None:
        return None
    parts = {
        "max_parallel": _optional(r, f, "max_parallel", _integer(1, 1000), path),
        "health_timeout": _optional(r, f, "health_timeout", _duration(1, 86400), path),
        "auto_rollback": _optional(r, f, "auto_rollback", _boolean, path),
    }
    if any(parts[k] is None for k in f):
        return None
    return UpdatePolicy(**{k: v for k, v in parts.items() if v is not None})


def _placement(r: _Report, value: object, path: str) -> Placement | None:
    f = _fields(r, value, path, ("movable",))
    if f is None:
        return None
    movable = _optional(r, f, "movable", _boolean, path)
    if "movable" in f and movable is None:
        return None
    return Placement() if movable is None else Placement(movable=movable)


MAX_QUERY = 2048  # characters of a Prometheus expression


def _scaling(r: _Report, value: object, path: str) -> Scaling | None:
    f = _fields(r, value, path, ("min", "max", "metric", "target", "cooldown"))
    if f is None:
        return None
    bounds = f"a whole number from 0 to {MAX_COUNT}"
    low = _required(r, f, "min", _integer(0, MAX_COUNT), bounds, path)
    high = _required(r, f, "max", _integer(0, MAX_COUNT), bounds, path)
    metric = _required(r, f, "metric", _scaling_metric, "cpu, memory or {prometheus: QUERY}",
                       path)
    target = _required(r, f, "target", _target, "a number above 0", path)
    cooldown = _optional(r, f, "cooldown", _duration(0, 86400), path)
    if None in (low, high, metric, target) or ("cooldown" in f and cooldown is None):
        return None
    if low > high:
        r.add(_at(path, "min"), f"min {low} is above max {high}; min <= max")
        return None
    kind, query = metric
    if kind in SCALING_METRICS and target > 100:
        r.add(_at(path, "target"), f"{kind} targets are percent of the instance's "
                                   f"resources.{kind} maximum: 1 to 100, got {_num(target)}")
        return None
    extra = {"cooldown": cooldown} if cooldown is not None else {}
    return Scaling(min=low, max=high, metric=kind, target=target, query=query, **extra)


def _scaling_metric(r: _Report, value: object, path: str) -> tuple[str, str | None] | None:
    if isinstance(value, str):
        kind = _choice(SCALING_METRICS)(r, value, path)
        return None if kind is None else (kind, None)
    if isinstance(value, Mapping) and set(value) == {"prometheus"}:
        query = _text(r, value["prometheus"], _at(path, "prometheus"))
        if query is None:
            return None
        if not query.strip() or len(query) > MAX_QUERY:
            r.add(_at(path, "prometheus"), f"a Prometheus expression of 1 to {MAX_QUERY} "
                                           "characters giving one number per job")
            return None
        return ("prometheus", query)
    r.add(path, f"unknown metric {_describe(value)}: use cpu, memory or "
                "{prometheus: 'QUERY'} (a PromQL expression whose value is one number)")
    return None


def _target(r: _Report, value: object, path: str) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e12:
        r.add(path, f"expected a number above 0, got {_describe(value)}")
        return None
    return float(value)


def _check_scaling_count(r: _Report, scaling: Scaling | None, count: int | None,
                         count_given: bool) -> None:
    """The count a job starts at lies within its scaling bounds (the autoscaler keeps it
    there)."""
    if scaling is None:
        return
    count = count if count is not None else 1
    if not scaling.min <= count <= scaling.max:
        r.add("count", f"{count} is outside scaling.min..max ({scaling.min}..{scaling.max}); "
                       f"set count within them" + ("" if count_given else
                                                  " (count defaults to 1)"))


def _concurrency(r: _Report, value: object, path: str) -> tuple[str, int | None] | None:
    """What a cron run that falls due while the previous one runs does: forbid (skipped),
    replace (the running one is stopped) or allow (both run, each its own unit, at most `max`
    at once: `{policy: allow, max: N}`). -> (policy, max_runs), max_runs None unless allow."""
    if isinstance(value, str):
        policy = _choice(CONCURRENCY_POLICIES)(r, value, path)
        if policy is None:
            return None
        return policy, DEFAULT_MAX_RUNS if policy == "allow" else None
    if not isinstance(value, Mapping):
        r.add(path, f"expected {_alts(CONCURRENCY_POLICIES)} or a mapping such as "
                    f"{{policy: allow, max: {DEFAULT_MAX_RUNS}}}, got {_describe(value)}")
        return None
    f = _fields(r, value, path, ("policy", "max"))
    if f is None:
        return None
    policy = _required(r, f, "policy", _choice(CONCURRENCY_POLICIES),
                       f"one of {_alts(CONCURRENCY_POLICIES)}", path)
    most = _optional(r, f, "max", _integer(1, MAX_RUNS), path)
    if policy is None or ("max" in f and most is None):
        return None
    if policy != "allow" and "max" in f:
        r.add(_at(path, "max"), f"only policy allow runs several at once; remove max (policy "
                                f"{policy} runs one at a time)")
        return None
    if policy != "allow":
        return policy, None
    return policy, most if most is not None else DEFAULT_MAX_RUNS


def _check_concurrency_runtime(r: _Report, concurrency: tuple[str, int | None] | None,
                               runtime: Runtime | None) -> None:
    """Runs side by side need a runtime that can run twice: a container instance (nspawn,
    lxc) has one root and one container name per slot."""
    if concurrency and concurrency[0] == "allow" and runtime and runtime.kind != "exec":
        r.add("concurrency", f"allow runs a slot's runs side by side, which the {runtime.kind} "
                             "runtime cannot (one container root and name per slot); use "
                             "forbid or replace, or runtime type exec")


def _calendar(r: _Report, value: object, path: str) -> str | None:
    text = _text(r, value, path)
    if text is None:
        return None
    if not _calendar_shape_ok(text):
        r.add(path, f"{_show(text)} is not a systemd OnCalendar expression: use a shorthand "
                    f"({', '.join(CALENDAR_SHORTHANDS[:5])}, ...) or "
                    "'[weekdays] [year-month-day] [hour:minute[:second]] [timezone]', "
                    "such as '*-*-* 02:00:00' or 'Mon..Fri 09:30'")
        return None
    zone = _calendar_zone(text)
    if zone is not None and not _known_timezone(zone):
        r.add(path, f"unknown time zone {_show(zone)}: systemd refuses the schedule; use UTC or "
                    "a tz database name such as Europe/Berlin")
        return None
    return _by_grammar(r, grammar.check_calendar, text, path)


def _calendar_zone(text: str) -> str | None:
    """The time zone at the end of an OnCalendar expression, if it names one."""
    tokens = text.split()
    return tokens[-1] if len(tokens) > 1 and TIMEZONE.fullmatch(tokens[-1]) else None


@functools.lru_cache(maxsize=256)
def _known_timezone(name: str) -> bool:
    """In the tz database (the scheduler's; nodes run the same distribution's tzdata)."""
    if name == "UTC":
        return True
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _calendar_shape_ok(text: str) -> bool:
    """A basic shape check; systemd-analyze calendar on the node is the full judge."""
    if text.strip().lower() in CALENDAR_SHORTHANDS:
        return True
    if len(text) > 200 or not CALENDAR_CHARS.fullmatch(text):
        return False
    tokens = text.split()
    if not 1 <= len(tokens) <= 4:
        return False
    rest = tokens[1:] if _is_weekdays(tokens[0]) else tokens
    if rest and TIMEZONE.fullmatch(rest[-1]):
        rest = rest[:-1]
    if rest and CALENDAR_DATE.fullmatch(rest[0]):
        rest = rest[1:]
    if rest and CALENDAR_TIME.fullmatch(rest[0]):
        rest = rest[1:]
    matched_any = _is_weekdays(tokens[0]) or any(
        CALENDAR_DATE.fullmatch(t) or CALENDAR_TIME.fullmatch(t) for t in tokens)
    return not rest and bool(matched_any)


def _is_weekdays(token: str) -> bool:
    parts = re.split(r"\.\.|,", token)
    return all(WEEKDAY.fullmatch(p) for p in parts) and bool(parts)

