# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)
"""Render Walle's systemd units from typed values, and parse them back.

Pure functions (stdlib only), shared by the walle_* modules and the tests. Every string that
reaches a unit file is either validated against a strict pattern or escaped so that systemd
reads back exactly the literal given; anything that cannot be made safe raises ValueError
naming the field. Nothing is dropped silently.

systemd facts this relies on (systemd.syntax(7), systemd.service(5)):
- a unit line ending in a backslash continues on the next line, and a newline ends a directive,
  so control characters are refused everywhere;
- specifiers (`%n`, `%h` ...) are expanded in most values: `%` is written `%%`;
- Exec*= words are split on whitespace, unquoted with C escapes, and `$VAR` is substituted:
  each argument is written double-quoted with `\\`, `\"`, `%%` and `$$`. The program (the
  first word) is quoted the same way except `$`, which systemd does not substitute there; the
  characters it cannot carry at all are refused by the grammar (check_executable).

What a value may be (sizes, durations, signals, paths, text) is decided by walle_grammar, the
file the scheduler's spec parser reads too: the renderer accepts what the parser accepts.
"""

from __future__ import annotations

import re

from ansible_collections.walle.pool.plugins.module_utils.walle_grammar import (
    MAX_RUNS,
    check_calendar,
    check_executable,
    check_path,
    check_signal,
)
from ansible_collections.walle.pool.plugins.module_utils.walle_grammar import (
    check_text as _grammar_text,
)
from ansible_collections.walle.pool.plugins.module_utils.walle_grammar import (
    format_duration as _grammar_duration,
)
from ansible_collections.walle.pool.plugins.module_utils.walle_grammar import (
    parse_size as _grammar_size,
)

__all__ = [
    "SLICE_PROPERTY_ORDER",
    "check_text",
    "format_duration",
    "format_size",
    "lxc_argv",
    "lxc_instance",
    "lxc_pre_stop",
    "nspawn_instance_root",
    "parse_size",
    "parse_systemctl_show",
    "parse_unit",
    "quote_env",
    "quote_exec_arg",
    "quote_exec_line",
    "quote_exec_program",
    "launch_unit",
    "render_launch",
    "render_service",
    "render_replace",
    "render_slice",
    "render_timer",
    "replace_unit",
    "run_template",
    "sandbox_directives",
    "slice_properties",
    "split_exec_words",
    "validate_slice_name",
    "validate_unit_stem",
]

_SLICE_NAME = re.compile(r"^walle(-[A-Za-z0-9_.:]+)*\.slice$")
_UNIT_STEM = re.compile(r"^walle-[A-Za-z0-9_.:@-]+$")
_SYSTEMD_SIZE = re.compile(r"^\d+(\.\d+)?[KMGTPE]?$")  # written as given
_PERCENT = re.compile(r"^\d+(\.\d+)?%$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PORT_VARIABLE = re.compile(r"^WALLE_PORT_[A-Z][A-Z0-9_]*$")
_USER = re.compile(r"^([a-z_][a-z0-9_-]*[$]?|\d+)$")
_CPUS = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_DEVICE_ALLOW = re.compile(
    r"^(/dev/[A-Za-z0-9._/:-]+|(char|block)-[A-Za-z0-9._*?-]+)( [rwm]{1,3})?$")
_BLOCK_DEVICE = re.compile(r"^/dev/[A-Za-z0-9._/:-]+$")
_CAPABILITY = re.compile(r"^CAP_[A-Z_]+$")
_CREDENTIAL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
ROOT_USERS = ("root", "0")
_MAX_WEIGHT = 10000

# Order in which slice directives are written (and compared).
SLICE_PROPERTY_ORDER = (
    "CPUWeight", "CPUQuota", "AllowedCPUs", "MemoryMin", "MemoryLow", "MemoryHigh", "MemoryMax",
    "IOWeight", "IOReadBandwidthMax", "IOWriteBandwidthMax", "TasksMax", "DevicePolicy",
    "DeviceAllow",
)


# ---------------------------------------------------------------------------------- checks

def check_text(field: str, value: str) -> str:
    """Return value if it is a str without control characters (newline, tab, NUL ...) and not
    longer than the grammar allows."""
    return _by_grammar(field, _grammar_text, value)


def _by_grammar(field: str, check, value):
    """One rule of walle_grammar; its message gets the field name in front."""
    try:
        return check(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


def _match(field: str, pattern: re.Pattern, value: str, what: str) -> str:
    check_text(field, value)
    if not pattern.match(value):
        raise ValueError(f"{field}: {value!r} is not {what}")
    return value


def _plain(field: str, value: str) -> str:
    """Free text written raw (Description=): specifiers escaped, edges checked because systemd
    strips surrounding whitespace and treats a trailing backslash as a line continuation."""
    check_text(field, value)
    if value != value.strip():
        raise ValueError(f"{field}: must not start or end with whitespace, got {value!r}")
    if value.endswith("\\"):
        raise ValueError(f"{field}: must not end with a backslash, got {value!r}")
    return value.replace("%", "%%")


def _abs_path(field: str, value: str) -> str:
    return _plain(field, _by_grammar(field, check_path, value))


def validate_slice_name(name: str, field: str = "name") -> str:
    """`walle.slice` or `walle-<part>[-<part>...].slice` (systemd-valid characters)."""
    return _match(field, _SLICE_NAME, name, "a Walle slice: walle.slice or walle-<name>.slice")


def validate_unit_stem(stem: str, field: str = "name") -> str:
    """A unit name without suffix that starts with `walle-`, e.g. `walle-web-0`."""
    return _match(field, _UNIT_STEM, stem,
                  "a Walle unit stem: walle-<name> with letters, digits, '-', '_', '.', ':'")


def _weight(field: str, value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_WEIGHT:
        raise ValueError(f"{field}: must be an integer in 1..{_MAX_WEIGHT}, got {value!r}")
    return str(value)


def _positive_int(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}: must be a positive integer, got {value!r}")
    return value


# ------------------------------------------------------------------------ sizes, durations
# The grammar is walle_grammar's (the spec's); percentages and infinity are systemd's own
# forms that only the modules' direct users write.

def format_size(field: str, value: int | str) -> str:
    """A size directive's value: bytes (int) or a size string of the grammar ("512M", "1.5G",
    "4GiB"), at most walle_grammar.MAX_BYTES; also "50%" and "infinity". Sizes systemd reads
    as given are written as given, others as bytes."""
    if isinstance(value, str):
        text = check_text(field, value).strip()
        if text == "infinity" or _PERCENT.match(text) or _SYSTEMD_SIZE.match(text):
            if _SYSTEMD_SIZE.match(text):
                _by_grammar(field, _grammar_size, text)  # the upper bound
            return text
    return str(_by_grammar(field, _grammar_size, value))


def parse_size(text: str) -> int | None:
    """Bytes of a size string as systemd shows it; None for infinity (or unset)."""
    text = text.strip()
    if text in ("infinity", "", "[not set]"):
        return None
    return _grammar_size(text)


def format_duration(field: str, seconds: float) -> str:
    """Seconds as a systemd time span: whole seconds as "30s", otherwise whole ms "1500ms"."""
    return _by_grammar(field, _grammar_duration, seconds)


# -------------------------------------------------------------------------------- quoting

def quote_exec_arg(arg: str, field: str = "args", expand: tuple[str, ...] = ()) -> str:
    """One Exec*= argument, double-quoted so systemd passes it literally (no word split, no
    specifier or $VAR expansion, no escape interpretation), except that the exact form
    `${NAME}` of a variable named in `expand` is left for systemd to substitute (the
    instance's own port variables, WALLE_PORT_<LABEL>): every other `$` stays `$$`."""
    check_text(field, arg)
    if not expand:
        return f'"{_escape_exec(arg)}"'
    let_through = re.compile("(" + "|".join(re.escape("${" + _expandable(n) + "}")
                                            for n in sorted(expand)) + ")")
    parts = let_through.split(arg)  # odd positions are the let-through references
    return '"' + "".join(p if k % 2 else _escape_exec(p) for k, p in enumerate(parts)) + '"'


def _escape_exec(text: str) -> str:
    return (text.replace("\\", "\\\\").replace('"', '\\"')
            .replace("%", "%%").replace("$", "$$"))


def _expandable(name: str) -> str:
    """A variable Exec*= arguments may reference: only the instance's port variables."""
    return _match("expand_env", _PORT_VARIABLE, name, "WALLE_PORT_<LABEL>")


def quote_exec_program(path: str, field: str = "command") -> str:
    """The program of an Exec*= line: a path the grammar allows (no quote, backslash or `$`:
    systemd refuses the first two there and does not substitute `$` in it), double-quoted
    with specifiers escaped so spaces and `%` reach systemd literally."""
    _by_grammar(field, check_executable, path)
    return '"' + path.replace("%", "%%") + '"'


def quote_exec_line(argv: list[str] | tuple[str, ...], field: str = "command",
                    args_field: str | None = None, expand: tuple[str, ...] = ()) -> str:
    """A whole Exec*= value from an argv whose first element is an absolute path; errors name
    `field` for the program and `args_field` (default: field) for the arguments; `expand`:
    see quote_exec_arg."""
    if not argv:
        raise ValueError(f"{field}: must not be empty")
    return " ".join([quote_exec_program(argv[0], field)] +
                    [quote_exec_arg(a, args_field or field, expand) for a in argv[1:]])


def quote_path_item(path: str, field: str, prefix: str = "") -> str:
    """One entry of a space-separated path list (ReadWritePaths=, ...): double-quoted so a
    space does not split it, with the `-`/`+` prefix inside the quotes as systemd reads it;
    backslash and quote C-escaped, specifiers escaped (no `$` expansion in these lists)."""
    _abs_path(field, path)  # the grammar's and the edges' checks (its result is escaped)
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{prefix}{escaped}"'


def quote_env(key: str, value: str, field: str = "env") -> str:
    """An Environment= value: `"KEY=value"` read back literally by systemd."""
    _match(f"{field}.{key}" if isinstance(key, str) else field, _ENV_KEY, key,
           "a variable name ([A-Za-z_][A-Za-z0-9_]*)")
    check_text(f"{field}.{key}", value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{key}={escaped}"'


# ------------------------------------------------------------------------------ rendering

def _format_unit(sections: list[tuple[str, list[tuple[str, str]]]]) -> str:
    blocks = []
    for section, entries in sections:
        lines = [f"[{section}]"] + [f"{key}={value}" for key, value in entries]
        blocks.append("\n".join(lines))
    return "# Managed by Walle (walle_* Ansible modules): local edits are overwritten.\n" + \
        "\n\n".join(blocks) + "\n"


def _bandwidth(field: str, entries) -> list[str]:
    out = []
    for i, entry in enumerate(entries or ()):
        if not isinstance(entry, dict) or set(entry) != {"device", "rate"}:
            raise ValueError(f"{field}[{i}]: expected {{device, rate}}, got {entry!r}")
        device = _match(f"{field}[{i}].device", _BLOCK_DEVICE, entry["device"],
                        "a block device path under /dev")
        rate = format_size(f"{field}[{i}].rate", entry["rate"])
        if rate.endswith("%"):
            raise ValueError(f"{field}[{i}].rate: a percentage is not a bandwidth")
        out.append(f"{device} {rate}")
    return out


def slice_properties(*, cpu_weight=None, cpu_quota=None, allowed_cpus=None, memory_min=None,
                     memory_low=None, memory_high=None, memory_max=None, io_weight=None,
                     io_read_bandwidth_max=None, io_write_bandwidth_max=None, tasks_max=None,
                     device_policy=None, device_allow=None) -> list[tuple[str, str]]:
    """Resource directives of a slice as ordered (directive, value) pairs; None means unset.
    Multi-valued directives (DeviceAllow, IO*BandwidthMax) appear once per value."""
    props: list[tuple[str, str]] = []
    if cpu_weight is not None:
        props.append(("CPUWeight", _weight("cpu_weight", cpu_weight)))
    if cpu_quota is not None:
        props.append(("CPUQuota", f"{_positive_int('cpu_quota', cpu_quota)}%"))
    if allowed_cpus is not None:
        props.append(("AllowedCPUs", _match("allowed_cpus", _CPUS, allowed_cpus,
                                            "a CPU list such as '0-3,8'")))
    for field, directive, value in (("memory_min", "MemoryMin", memory_min),
                                    ("memory_low", "MemoryLow", memory_low),
                                    ("memory_high", "MemoryHigh", memory_high),
                                    ("memory_max", "MemoryMax", memory_max)):
        if value is not None:
            props.append((directive, format_size(field, value)))
    if io_weight is not None:
        props.append(("IOWeight", _weight("io_weight", io_weight)))
    props += [("IOReadBandwidthMax", v)
              for v in _bandwidth("io_read_bandwidth_max", io_read_bandwidth_max)]
    props += [("IOWriteBandwidthMax", v)
              for v in _bandwidth("io_write_bandwidth_max", io_write_bandwidth_max)]
    if tasks_max is not None:
        props.append(("TasksMax", _tasks_max(tasks_max)))
    if device_policy is not None:
        if device_policy not in ("auto", "closed", "strict"):
            raise ValueError(
                f"device_policy: must be auto, closed or strict, got {device_policy!r}")
        props.append(("DevicePolicy", device_policy))
    for i, entry in enumerate(device_allow or ()):
        props.append(("DeviceAllow", _match(f"device_allow[{i}]", _DEVICE_ALLOW, entry,
                                            "'/dev/<node> [rwm]' or 'char-<group> [rwm]'")))
    return props


def _tasks_max(value) -> str:
    if value == "infinity":
        return "infinity"
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"tasks_max: must be a positive integer or 'infinity', got {value!r}")
    return str(value)


def render_slice(name: str, *, description: str | None = None, **resources) -> str:
    """The text of a Walle slice unit; `resources` are the keywords of slice_properties()."""
    validate_slice_name(name)
    unit = [("Description", _plain("description", description or f"Walle slice {name}"))]
    return _format_unit([("Unit", unit), ("Slice", slice_properties(**resources))])


def render_service(name: str, *, slice: str, argv: list[str] | tuple[str, ...],
                   service_type: str = "exec", description: str | None = None,
                   env: dict[str, str] | None = None, environment_file: str | None = None,
                   user: str | None = None, working_dir: str | None = None,
                   restart: str | None = None, start_limit_burst: int | None = None,
                   pre_stop: list[str] | tuple[str, ...] | None = None,
                   stop_signal: str | None = None, stop_timeout: float | None = None,
                   kill_mode: str | None = None, delegate: bool = False,
                   sandbox: bool = True, capabilities: list[str] | tuple[str, ...] = (),
                   device_allow: list[str] | tuple[str, ...] = (), write_execute: bool = False,
                   credentials: dict[str, str] | None = None,
                   remain_after_exit: bool = False,
                   post_stop: list[str] | tuple[str, ...] | None = None,
                   restart_delay: float | None = None,
                   expand_env: list[str] | tuple[str, ...] = (),
                   pre_start: list[list[str]] | tuple[list[str], ...] = (),
                   cleanup: list[str] | tuple[str, ...] | None = None,
                   run_template: bool = False) -> str:
    """The text of a Walle service unit running `argv` (argv[0] an absolute path).

    `run_template` makes it the template `<name>@.service` of a cron slot's runs
    (concurrency: allow, render_launch): each run is an instance `<name>@<run>.service`, in
    the same slice (so the runs share its limits), with its own RuntimeDirectory=
    `<name>@<run>`, unloaded once it ended (CollectMode=inactive-or-failed); `post_stop` gets
    `--unit %n` (the run's own unit name, systemd's specifier) appended. The dynamic user is
    the template's (systemd derives it from the unit prefix), so the runs share it and the
    StateDirectory=.

    `remain_after_exit` (batch work) keeps the unit active (exited) after a successful run:
    systemd does not unload it, so its outcome can be read until it is stopped.

    `post_stop` is Walle's own program run after the main process ended, whatever the result
    (ExecStopPost=, with the `+` prefix: outside the sandbox, as root): the batch commit
    (walle-batch-commit), which must read the node's Consul token; or the cron run hook
    (walle-cron-record). Never a job's argv.

    `restart_delay` (cron retries) is RestartSec=; it also turns systemd's start rate limit
    off (StartLimitIntervalSec=0): a cron run's retries are bounded by its hook, and the
    timer's own starts must never trip the limit.

    `pre_start` (ExecStartPre=, in order) and `cleanup` (ExecStopPost=, failure ignored, before
    `post_stop`) are Walle's own programs too: the nspawn runtime's per-instance root
    (nspawn_instance_root), made before each start and removed after each stop.

    With `sandbox` (the default) the unit gets sandbox_directives(): an unprivileged identity
    and the hardening baseline. `sandbox=False` is for privileged jobs and for the nspawn
    runtime, whose confinement is the container's user namespace. `credentials` maps a
    credential name to a root-only file on the node (LoadCredential=): the service reads it
    from $CREDENTIALS_DIRECTORY/<name>, and the value never enters the unit.

    `expand_env` names variables of `env` (the instance's WALLE_PORT_<LABEL>) whose exact
    form `${NAME}` in argv is left for systemd to substitute at start; nothing else is."""
    validate_unit_stem(name)
    if run_template and "@" in name:
        raise ValueError(f"name: {name!r} cannot name a run template (no '@' in it)")
    for var in expand_env:
        if var not in (env or {}):
            raise ValueError(f"expand_env: {var!r} is not a variable of env; only the unit's "
                             "own port variables may be substituted in args")
    validate_slice_name(slice, "slice")
    if service_type not in ("exec", "oneshot", "notify", "simple"):
        raise ValueError(f"service_type: unsupported {service_type!r}")
    if restart not in (None, "always", "on-failure", "no"):
        raise ValueError(f"restart: must be always, on-failure or no, got {restart!r}")
    if kill_mode not in (None, "control-group", "mixed", "process"):
        raise ValueError(f"kill_mode: unsupported {kill_mode!r}")
    unit = [("Description", _plain("description", description or f"Walle workload {name}"))]
    if start_limit_burst is not None:
        # The burst counts every start of this boot: `retries` attempts in all, then failed.
        unit += [("StartLimitIntervalSec", "infinity"),
                 ("StartLimitBurst", str(_positive_int("retries", start_limit_burst)))]
    if restart_delay is not None:
        unit.append(("StartLimitIntervalSec", "0"))
    if run_template:
        unit.append(("CollectMode", "inactive-or-failed"))  # ended runs do not pile up
    service = [("Type", service_type), ("Slice", slice)]
    service += [("Environment", quote_env(k, v)) for k, v in sorted((env or {}).items())]
    if environment_file is not None:
        service.append(("EnvironmentFile", _abs_path("environment_file", environment_file)))
    if user is not None:
        service.append(("User", _match("user", _USER, user, "a user name or numeric uid")))
    if working_dir is not None:
        service.append(("WorkingDirectory", _abs_path("working_dir", working_dir)))
    for cred, path in sorted((credentials or {}).items()):
        service.append(("LoadCredential", f"{_credential_name(cred)}:"
                                          f"{_abs_path(f'credentials.{cred}', path)}"))
    if sandbox:
        service += sandbox_directives(name, user=user, working_dir=working_dir,
                                      capabilities=capabilities, device_allow=device_allow,
                                      write_execute=write_execute,
                                      runtime_directory=f"{name}@%i" if run_template else None)
    else:
        for field, value in (("capabilities", capabilities), ("device_allow", device_allow),
                             ("write_execute", write_execute)):
            if value:
                raise ValueError(f"{field}: only for a sandboxed unit (an unsandboxed one "
                                 "already has every capability and device)")
    for step in pre_start:
        service.append(("ExecStartPre", quote_exec_line(step, "pre_start")))
    service.append(("ExecStart", quote_exec_line(argv, "command", "args", tuple(expand_env))))
    if pre_stop:
        service.append(("ExecStop", quote_exec_line(pre_stop, "pre_stop")))
    if cleanup:
        service.append(("ExecStopPost", "-+" + quote_exec_line(cleanup, "cleanup")))
    if post_stop:
        # a run's own unit name comes from systemd (%n), never from a value
        own = ' "--unit" "%n"' if run_template else ""
        service.append(("ExecStopPost", "+" + quote_exec_line(post_stop, "post_stop") + own))
    if restart is not None:
        service.append(("Restart", restart))
    if restart_delay is not None:
        service.append(("RestartSec", format_duration("retry_delay", restart_delay)))
    if service_type == "oneshot":
        service.append(("RemainAfterExit", "no"))
    elif remain_after_exit:
        service.append(("RemainAfterExit", "yes"))
    if stop_signal is not None:
        service.append(("KillSignal", _signal(stop_signal)))
    if kill_mode is not None:
        service.append(("KillMode", kill_mode))
    if stop_timeout is not None:
        service.append(("TimeoutStopSec", format_duration("stop_timeout", stop_timeout)))
    service.append(("SendSIGKILL", "yes"))
    if delegate:
        service.append(("Delegate", "yes"))
    return _format_unit([("Unit", unit), ("Service", service)])


def sandbox_directives(name: str, *, user: str | None = None, working_dir: str | None = None,
                       capabilities: list[str] | tuple[str, ...] = (),
                       device_allow: list[str] | tuple[str, ...] = (),
                       write_execute: bool = False,
                       runtime_directory: str | None = None) -> list[tuple[str, str]]:
    """The hardening baseline of a workload service (systemd.exec(5)), as ordered pairs.

    - Identity: DynamicUser=yes (a fresh uid per start) unless the job names a user; root is
      refused here: a root workload is a privileged one and is rendered without sandbox.
    - Files: the whole system read-only (ProtectSystem=strict), no /home, a private /tmp; the
      writable places are StateDirectory= (/var/lib/<name>), RuntimeDirectory= (/run/<name>)
      and the job's working_dir (ReadWritePaths=, as far as file permissions allow).
    - Devices: PrivateDevices=yes, unless devices are granted (GPUs): then the same
      DevicePolicy=closed + DeviceAllow= list as the slice.
    - Kernel, cgroups, clock, hostname, namespaces, realtime, personality, SUID: protected.
    - Capabilities: none (empty bounding set) unless asked; what is asked is also ambient, so a
      non-root user can use it (e.g. CAP_NET_BIND_SERVICE for a port below 1024).
    - System calls: the @system-service set minus @privileged, native architecture only, and
      an EPERM answer (not a kill) for the rest; sockets: IPv4, IPv6 and Unix only.
    - MemoryDenyWriteExecute=yes unless `write_execute` (JIT runtimes: Java, Node.js, PyPy).
    """
    if user is not None and user in ROOT_USERS:
        raise ValueError("user: root is a privileged workload; it needs privileged=true "
                         "(rendered without the sandbox), or run as an unprivileged user")
    caps = [_match(f"capabilities[{i}]", _CAPABILITY, cap, "a capability name such as "
                   "CAP_NET_BIND_SERVICE") for i, cap in enumerate(capabilities)]
    out = [("DynamicUser", "yes")] if user is None else []
    # runtime_directory: render_service's, a fixed form of the checked name (a run template's
    # `<name>@%i`), never a value of the job
    out += [("StateDirectory", name), ("RuntimeDirectory", runtime_directory or name)]
    if working_dir is not None:
        out.append(("ReadWritePaths", quote_path_item(working_dir, "working_dir", prefix="-")))
    out += [("UMask", "0077"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("PrivateMounts", "yes")]
    if device_allow:
        out += slice_properties(device_policy="closed", device_allow=list(device_allow))
    else:
        out.append(("PrivateDevices", "yes"))
    out += [(directive, "yes") for directive in (
        "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
        "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictNamespaces",
        "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality", "RemoveIPC")]
    out += [("ProtectProc", "invisible"), ("KeyringMode", "private")]
    if not write_execute:
        out.append(("MemoryDenyWriteExecute", "yes"))
    out += [("CapabilityBoundingSet", " ".join(caps)), ("AmbientCapabilities", " ".join(caps)),
            ("SystemCallFilter", "@system-service"), ("SystemCallFilter", "~@privileged"),
            ("SystemCallErrorNumber", "EPERM"), ("SystemCallArchitectures", "native"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX")]
    return out


def _credential_name(value: str) -> str:
    return _match("credentials", _CREDENTIAL, value,
                  "a credential name: letters, digits, '_', '.', '-' (at most 64)")


def _signal(value: str) -> str:
    """KillSignal=: a signal of the grammar's allow-list (one that ends the process); a
    lower-case name or one without SIG is read as the signal it names."""
    name = check_text("stop_signal", value).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    return _by_grammar("stop_signal", check_signal, name)


# ---------------------------------------------------------------- nspawn instance roots
# Each nspawn instance runs on its own overlay root over the shared, read-only unpacked image:
# lower = the image in the node's cache, upper/work = a per-instance folder made fresh before
# each start and removed after each stop (ephemeral, as a container should be). metacopy=on
# makes systemd-nspawn's --private-users-ownership=chown (the user namespace's uid shift)
# copy up only inodes' metadata, never file data, and leaves the image itself untouched, so
# instances of one image run side by side, each in its own uid range. (nspawn's own
# --volatile=overlay cannot be used: with a user namespace it needs idmapped mounts, which
# overlayfs does not offer on the nodes' kernels, and chown would rewrite the shared image.)

NSPAWN_INSTANCES_DIR = "/var/lib/walle/instances"
# Fixed scripts: the paths come as positional arguments (checked by nspawn_instance_root),
# never spliced into the text. `rm --one-file-system` never crosses into a mount that is
# still there (the image under an overlay that could not be unmounted).
NSPAWN_ROOT_SETUP = (
    'set -eu; dir=$1; image=$2; '
    'if mountpoint -q "$dir/root"; then umount "$dir/root"; fi; '
    'rm -rf --one-file-system "$dir"; mkdir -p -m 0700 "$dir"; '
    'mkdir "$dir/upper" "$dir/work" "$dir/root"; '
    'exec mount -t overlay walle-root -o '
    '"lowerdir=$image,upperdir=$dir/upper,workdir=$dir/work,metacopy=on" "$dir/root"'
)
NSPAWN_ROOT_TEARDOWN = (
    'dir=$1; if mountpoint -q "$dir/root"; then umount "$dir/root" || '
    'umount --lazy "$dir/root"; fi; rm -rf --one-file-system "$dir"'
)
# overlayfs splits its options on ',' and its lower layers on ':' (and reads '\\' escapes)
_OVERLAY_PATH = re.compile(r"^/[A-Za-z0-9_./@+=-]+$")


def nspawn_instance_root(name: str, image: str,
                         base: str = NSPAWN_INSTANCES_DIR) -> dict[str, object]:
    """The per-instance root of an nspawn unit: `root` (systemd-nspawn's -D), `setup`
    (ExecStartPre= argv: a fresh overlay of `image`) and `teardown` (ExecStopPost= argv:
    unmount and remove). `image` is the real path of the unpacked image (checked by the
    caller to lie in the node's image store)."""
    validate_unit_stem(name)
    folder = f"{base.rstrip('/')}/{name}"
    for field, path in (("image", image), ("name", folder)):
        check_text(field, path)
        if not _OVERLAY_PATH.match(path) or "/../" in f"{path}/":
            raise ValueError(f"{field}: {path!r} cannot be an overlay layer (only letters, "
                             "digits and _ . / @ + = - : no ',' ':' or a backslash)")
    return {"dir": folder, "root": f"{folder}/root",
            "setup": ["/bin/sh", "-c", NSPAWN_ROOT_SETUP, "walle-root", folder, image],
            "teardown": ["/bin/sh", "-c", NSPAWN_ROOT_TEARDOWN, "walle-root", folder]}


# ---------------------------------------------------------------- lxc instances
# An lxc instance (Debian's lxc 5.0) is an unprivileged application container run in the
# foreground as the instance's unit (`lxc-start -F`), on the same kind of per-instance overlay
# root as nspawn (the same fixed setup script), with the ownership of that root shifted into a
# uid/gid range of its own (metacopy=on: the chown copies up metadata, never file data, and
# never touches the shared image). lxc.cgroup.relative keeps LXC's cgroups (lxc.monitor.<name>,
# lxc.payload.<name>) inside the unit's own cgroup (Delegate=yes), so the container's
# processes are accounted and limited by the instance's slice. The container shares the
# node's network (lxc.net.0.type = none): its ports are the node's.
#
# Nothing of the job is written into the container's configuration: the config below is fixed
# text whose only values are the container name, its root and its uid range, all made here or
# by the fixed prepare script; the job's command and args reach lxc-start as argv after `--`,
# its environment through the unit's Environment= (quote_env), passed on by name
# (`lxc.environment = NAME` takes the value from lxc-start's environment).

LXC_INSTANCES_DIR = "/var/lib/walle/lxc"
LXC_RUNTIME_INSTANCES_DIR = "/run/walle/lxc"  # when the node's disk is itself an overlay
LXC_PYTHON = "/usr/bin/python3"  # every Walle node has it (Ansible's interpreter)
# uid/gid ranges: 65536 ids each from 0x70000000, above systemd-nspawn's --private-users=pick
# range (0x00080000-0x6FFF0000) and below systemd's reserved 0x7FFE0000; one lock file per
# range in use under LXC_IDS_DIR (tmpfs: a reboot frees them all).
LXC_IDS_DIR = "/run/walle/lxc-ids"
LXC_ID_FIRST = 0x70000000
LXC_ID_SIZE = 65536
LXC_ID_RANGES = 4093
LXC_CONFIG = """# Written by Walle (walle_workload runtime=lxc) at each start; removed at each stop.
lxc.include = /usr/share/lxc/config/common.conf
lxc.include = /usr/share/lxc/config/userns.conf
lxc.uts.name = {name}
lxc.rootfs.path = dir:{root}
lxc.idmap = u 0 {base} {size}
lxc.idmap = g 0 {base} {size}
lxc.net.0.type = none
lxc.cgroup.relative = 1
lxc.apparmor.profile = unconfined
lxc.mount.auto =
lxc.mount.auto = proc:mixed
lxc.console.path = none
lxc.tty.max = 0
lxc.autodev = 1
"""
# ExecStartPre= (after the overlay root is mounted): take a free uid range (or the one this
# instance already holds), shift the root's ownership into it (setuid/setgid bits kept, file
# capabilities rewritten for the range's root), make the instance folder traversable by that
# range (its root must reach its rootfs), write the config. Arguments: folder, container name.
LXC_PREPARE = r"""
import os, stat, struct, sys
folder, name = sys.argv[1], sys.argv[2]
ids, first, size, count = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
os.makedirs(ids, mode=0o700, exist_ok=True)
base = None
for entry in sorted(os.listdir(ids)):
    try:
        with open(os.path.join(ids, entry)) as held:
            if held.read() == folder:
                base = int(entry)
    except (OSError, ValueError):
        pass
for k in range(count if base is None else 0):
    try:
        fd = os.open(os.path.join(ids, str(first + k * size)),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        continue
    os.write(fd, folder.encode())
    os.close(fd)
    base = first + k * size
    break
if base is None:
    sys.exit("walle: no free uid range left for an lxc container under " + ids)
with open(os.path.join(folder, "idmap"), "w") as out:
    out.write(str(base))
root = os.path.join(folder, "root")

def shift(path):
    st = os.lstat(path)
    link = stat.S_ISLNK(st.st_mode)
    cap = None
    if not link:
        try:
            cap = os.getxattr(path, "security.capability", follow_symlinks=False)
        except OSError:
            cap = None
    uid = st.st_uid if st.st_uid < size else 65534
    gid = st.st_gid if st.st_gid < size else 65534
    os.lchown(path, base + uid, base + gid)
    if not link and st.st_mode & 0o6000:
        os.chmod(path, stat.S_IMODE(st.st_mode))
    if cap is not None and len(cap) >= 20:
        flags = struct.unpack("<I", cap[:4])[0] & 1
        os.setxattr(path, "security.capability",
                    struct.pack("<I", 0x03000000 | flags) + cap[4:20] + struct.pack("<I", base),
                    follow_symlinks=False)

shift(root)
for top, dirs, files in os.walk(root):
    for entry in dirs + files:
        shift(os.path.join(top, entry))
os.chmod(folder, 0o711)
config = os.path.join(folder, "lxc", name)
os.makedirs(config, mode=0o700)
with open(os.path.join(config, "config"), "w") as out:
    out.write(CONFIG.format(name=name, root=root, base=base, size=size))
"""
# One line (an Exec*= argument cannot hold a newline): the script and its config text as a
# Python string literal run by exec(); both fixed, nothing of the job in them.
LXC_PREPARE_CODE = "exec(" + repr("CONFIG = " + repr(LXC_CONFIG) + "\n" + LXC_PREPARE) + ")"
# ExecStopPost=: release the uid range, then unmount and remove the root and the config
# (the nspawn teardown). Argument: folder.
LXC_TEARDOWN = (
    'dir=$1; ids=$2; b=$(cat "$dir/idmap" 2>/dev/null); '
    'case $b in ""|*[!0-9]*) ;; *) rm -f "$ids/$b";; esac; '
    + NSPAWN_ROOT_TEARDOWN.replace("dir=$1; ", "", 1)
)
_LXC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


def lxc_instance(name: str, image: str, base: str = LXC_INSTANCES_DIR) -> dict[str, object]:
    """The per-instance files of an lxc unit: `lxcpath` (lxc-start's -P), `container` (its
    -n), `root`, `setup` (ExecStartPre= argvs: the overlay root, then LXC_PREPARE) and
    `teardown` (ExecStopPost= argv). `image` is the real path of the unpacked image (checked
    by the caller to lie in the node's image store)."""
    root = nspawn_instance_root(name, image, base)
    container = re.sub(r"[^A-Za-z0-9-]", "-", name)[:64].strip("-")
    _match("name", _LXC_NAME, container, "a container name")
    folder = root["dir"]
    prepare = [LXC_PYTHON, "-c", LXC_PREPARE_CODE, folder, container, LXC_IDS_DIR,
               str(LXC_ID_FIRST), str(LXC_ID_SIZE), str(LXC_ID_RANGES)]
    return {"dir": folder, "root": root["root"], "lxcpath": f"{folder}/lxc",
            "container": container, "setup": [root["setup"], prepare],
            "teardown": ["/bin/sh", "-c", LXC_TEARDOWN, "walle-lxc", folder, LXC_IDS_DIR]}


def lxc_argv(lxc_start: str, instance: dict, command: str, args: list[str] | tuple[str, ...],
             env_names: list[str] | tuple[str, ...] = (),
             working_dir: str | None = None) -> list[str]:
    """lxc-start's argv for the instance, in the foreground: the environment variables named
    (values from the unit's Environment=, read by lxc by name), the working directory, and
    the job's command and args after `--`, passed literally."""
    argv = [lxc_start, "-F", "-n", str(instance["container"]), "-P", str(instance["lxcpath"])]
    for key in env_names:
        _match(f"env.{key}", _ENV_KEY, key, "a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        argv += ["-s", f"lxc.environment={key}"]
    if working_dir is not None:
        argv += ["-s", f"lxc.init.cwd={_abs_path('working_dir', working_dir)}"]
    return argv + ["--", command, *args]


def lxc_pre_stop(lxc_attach: str, instance: dict, pre_stop: list[str] | tuple[str, ...],
                 env_names: list[str] | tuple[str, ...] = ()) -> list[str] | None:
    """The stop hook's ExecStop= argv for an lxc instance: run inside the container through
    lxc-attach (its namespaces and cgroup, as its root), with the job's environment only."""
    if not pre_stop:
        return None
    if not str(pre_stop[0]).startswith("/"):
        raise ValueError(f"pre_stop: the program must be an absolute path, got {pre_stop[0]!r}")
    argv = [lxc_attach, "-n", str(instance["container"]), "-P", str(instance["lxcpath"]),
            "--clear-env"]
    for key in env_names:
        argv += ["--keep-var", key]
    return argv + ["--", *pre_stop]


def render_timer(name: str, *, schedule: str, description: str | None = None,
                 persistent: bool = True, replace: bool = False, launch: bool = False) -> str:
    """The text of `<name>.timer`, starting `<name>.service` on the OnCalendar= schedule
    (to the second: AccuracySec=1s, not systemd's default minute). A timer never starts a
    second run while one is active (concurrency: forbid); with `replace` it starts
    `<name>-replace.service` instead (render_replace), which restarts a running run; with
    `launch` (concurrency: allow) `<name>-launch.service` (render_launch), which starts a new
    run unit of the template `<name>@.service` each time."""
    validate_unit_stem(name)
    _by_grammar("schedule", check_calendar, schedule)
    if replace and launch:
        raise ValueError("concurrency: replace and allow exclude each other")
    unit = [("Description", _plain("description", description or f"Walle schedule {name}"))]
    target = replace_unit(name) if replace else launch_unit(name) if launch else \
        f"{name}.service"
    timer = [("OnCalendar", schedule), ("AccuracySec", "1s"),
             ("Persistent", "true" if persistent else "false"), ("Unit", target)]
    return _format_unit([("Unit", unit), ("Timer", timer)])


def replace_unit(name: str) -> str:
    """The unit a `concurrency: replace` timer starts: `<name>-replace.service`."""
    return f"{validate_unit_stem(name)}-replace.service"


def render_replace(name: str, *, systemctl: str = "/bin/systemctl") -> str:
    """`<name>-replace.service`: `systemctl --no-block restart <name>.service`, which stops a
    run still going (its stop signal and timeout apply) and starts the new one, or just starts
    it. Fixed argv, the unit name checked: nothing of the job runs here."""
    validate_unit_stem(name)
    unit = [("Description", f"Walle schedule {name}: replace a running run")]
    service = [("Type", "oneshot"),
               ("ExecStart", quote_exec_line([systemctl, "--no-block", "restart",
                                              f"{name}.service"]))]
    return _format_unit([("Unit", unit), ("Service", service)])


def run_template(name: str) -> str:
    """The template of a `concurrency: allow` slot's runs: `<name>@.service`."""
    if "@" in validate_unit_stem(name):
        raise ValueError(f"name: {name!r} cannot name a run template (no '@' in it)")
    return f"{name}@.service"


def launch_unit(name: str) -> str:
    """The unit a `concurrency: allow` timer starts: `<name>-launch.service`."""
    return f"{validate_unit_stem(name)}-launch.service"


# ExecStart= of `<name>-launch.service`: a fixed script; the systemctl path, the checked unit
# stem and the bound come as positional arguments. It counts the runs of the slot that are
# starting, running, waiting for a retry or stopping, and starts one more run unit named by
# the time (UTC, to the second) and its own pid, unless `max` already run: then the fire is
# skipped, with a line in the launcher's journal. The timer never starts the launcher while it
# runs, so two fires never count at once.
CRON_LAUNCH = (
    'systemctl=$1; stem=$2; most=$3; '
    'going=$("$systemctl" list-units --plain --no-legend --no-pager '
    '--state=activating,active,deactivating "$stem@*.service" | wc -l); '
    'if [ "$going" -ge "$most" ]; then '
    'echo "walle: $stem: $going run(s) going, at most $most at once: this fire is skipped"; '
    'exit 0; fi; '
    'run="$(date -u +%Y%m%dT%H%M%S)-$$"; '
    'echo "walle: $stem: starting run $run ($going going)"; '
    'exec "$systemctl" --no-block start "$stem@$run.service"'
)


def render_launch(name: str, *, max_runs: int, systemctl: str = "/bin/systemctl") -> str:
    """`<name>-launch.service`, the oneshot a `concurrency: allow` timer starts: CRON_LAUNCH,
    which starts a new run `<name>@<run>.service` unless `max_runs` of the slot's runs are
    going. Fixed script and argv, the unit stem checked and the bound a number: nothing of the
    job runs here."""
    run_template(name)
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or \
            not 1 <= max_runs <= MAX_RUNS:
        raise ValueError(f"max_runs: must be 1..{MAX_RUNS}, got {max_runs!r}")
    unit = [("Description", f"Walle schedule {name}: start a run (at most {max_runs} at once)")]
    service = [("Type", "oneshot"),
               ("ExecStart", quote_exec_line(["/bin/sh", "-c", CRON_LAUNCH, "walle-launch",
                                              systemctl, name, str(max_runs)]))]
    return _format_unit([("Unit", unit), ("Service", service)])


# -------------------------------------------------------------------------------- parsing

def parse_unit(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive, as systemd's parser splits lines: comments
    skipped, continuation lines (trailing backslash) joined. Tests use it to prove that a value
    produced exactly one directive."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in text.split("\n"):  # systemd splits on newline only
        line = pending + raw
        pending = ""
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1] + " "
            continue
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise ValueError(f"unit line without '=': {raw!r}")
        entries.append((section, key.strip(), value.strip()))
    return entries


def parse_systemctl_show(text: str) -> dict[str, str]:
    """`systemctl show` output (Key=Value lines) as a dict; later keys win."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            props[key] = value
    return props


def split_exec_words(value: str) -> list[str]:
    """Undo quote_exec_arg for a rendered Exec*= value (a test oracle for the quoting, following
    systemd's rules for double-quoted words: C escapes, then %% and $$)."""
    return [word.replace("%%", "%").replace("$$", "$") for word in raw_exec_words(value)]


def raw_exec_words(value: str) -> list[str]:
    """The double-quoted words of a rendered Exec*= value with C escapes undone, `%%` and `$`
    still as written (what systemd substitutes in before running it)."""
    words: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == " ":
            i += 1
            continue
        if value[i] != '"':
            raise ValueError(f"unquoted word at {i} in {value!r}")
        i += 1
        word = []
        while value[i] != '"':
            if value[i] == "\\":
                i += 1
            word.append(value[i])
            i += 1
        i += 1
        words.append("".join(word))
    return words
