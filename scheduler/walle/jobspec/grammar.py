"""The node's grammar (plugins/module_utils/walle_grammar.py), loaded for the scheduler.

One file holds the rules a value must meet to reach a node, and two programs read it: the
Ansible modules on the nodes (Ansible ships it as the walle.pool collection's module_utils, so
it stays stdlib-only and lives in module_utils) and the spec parser here, which loads that
very file through `walle.node_utils` instead of keeping a copy that could drift. See
docs/architecture.md, "One grammar".

Beside it, the spec's own vocabulary: the kinds, choices and patterns a job spec is read
against (jobspec/parse.py and jobspec/readers.py).
"""

from __future__ import annotations

import re

from walle.node_utils import load

grammar = load("walle_grammar")

ROOT = "<root>"  # the path of a problem with the document as a whole
MAX_SPEC_BYTES = 256 * 1024

JOB_KINDS = ("service", "batch", "cron")
RUNTIME_KINDS = ("exec", "nspawn", "lxc")
CONTAINER_KINDS = ("nspawn", "lxc")  # runtimes that run an image (runtime.image)
CHECK_TYPES = ("http", "tcp", "ttl")
RESTART_POLICIES = ("always", "on-failure", "no")
CONCURRENCY_POLICIES = ("forbid", "replace", "allow")  # cron: a run due while one runs
MAX_RUNS = grammar.MAX_RUNS  # cron, concurrency allow: runs of one slot at once, at most
DEFAULT_MAX_RUNS = grammar.DEFAULT_MAX_RUNS  # ... when the spec does not say
SCALING_METRICS = ("cpu", "memory")  # or {prometheus: QUERY}
MAX_COUNT = 1000  # a job's count, and its scaling bounds
STRATEGIES = ("spread", "binpack")
BALANCER_MODES = ("http", "tcp")
OPERATORS = ("eq", "ne", "in", "not_in", "regex", "distinct_hosts", "max_per")

PORT_LABEL = re.compile(r"[a-z][a-z0-9_]{0,31}")  # WALLE_PORT_<LABEL> in the environment
MAX_PORTS = 32  # named ports per job
# The ports a node hands out to dynamic labels unless its node meta walle_port_range says
# otherwise (core/ports.py); a static port inside it would collide with assigned ones.
DEFAULT_PORT_RANGE = (20000, 32000)

DNS_LABEL = re.compile(r"[a-z][a-z0-9-]*")
DNS_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
USER = re.compile(r"[a-z_][a-z0-9_-]*\$?")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DATASET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ATTRIBUTE = re.compile(r"(name|zone|rack|label\.[A-Za-z0-9_][A-Za-z0-9_.-]*)")
CALENDAR_SHORTHANDS = ("minutely", "hourly", "daily", "weekly", "monthly", "quarterly",
                       "semiannually", "yearly", "annually")
CALENDAR_CHARS = re.compile(r"[A-Za-z0-9*,./:~ +_-]+")
WEEKDAY = re.compile(r"(mon|tue|wed|thu|fri|sat|sun)[a-z]*", re.IGNORECASE)
CALENDAR_DATE = re.compile(r"[0-9*][0-9*,./~-]*-[0-9*][0-9*,./~]*")
CALENDAR_TIME = re.compile(r"[0-9*][0-9*,./]*:[0-9*][0-9*,./]*(:[0-9*][0-9*,./]*)?")
TIMEZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*")
# Sandbox and secrets (docs/security.md): a secret's source is a relative path under a
# dedicated prefix; it may not climb out.
STORE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
SECRET_SOURCES = ("consul", "file")
CAPABILITIES = (
    "CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_AUDIT_WRITE", "CAP_BLOCK_SUSPEND", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER", "CAP_FSETID", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_KILL", "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE", "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_MKNOD", "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_RAW", "CAP_PERFMON", "CAP_SETFCAP",
    "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYSLOG", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT", "CAP_SYS_MODULE", "CAP_SYS_NICE", "CAP_SYS_PACCT", "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
)
