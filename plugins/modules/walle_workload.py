#!/usr/bin/python
# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: walle_workload
short_description: Write and run the systemd unit(s) of one Walle workload instance
version_added: "0.1.0"
description:
  - Renders the unit(s) of one instance into C(/etc/systemd/system), validates them with
    C(systemd-analyze verify) when that binary exists, writes them atomically, reloads systemd
    only when a unit changed, and brings them to O(state).
  - O(kind=service) is a long-running C(Type=exec) service with C(Restart=O(restart)).
    O(kind=batch) runs to completion (C(Type=exec), C(Restart=on-failure),
    C(StartLimitBurst=O(retries)) over the whole boot, C(RemainAfterExit=yes), so a finished run
    stays active (exited) and its outcome is readable until the unit is stopped).
    O(kind=cron) writes C(<name>.timer) (C(OnCalendar=O(schedule)), C(AccuracySec=1s),
    C(Persistent=true)) and a C(Type=oneshot) C(<name>.service) it starts. A failed run is
    retried O(retries) times, O(retry_delay) apart (C(Restart=on-failure), C(RestartSec=));
    C(/usr/local/libexec/walle/walle-cron-record) (installed by the node role) runs after
    every attempt as C(ExecStopPost=+), ends the retries and, with O(history), records the run
    in Consul. O(concurrency) says what happens when the timer fires during a run; with
    V(allow) the runs are instances C(<name>@<run>.service) of the template C(<name>@.service)
    instead of C(<name>.service), started by C(<name>-launch.service) (see O(concurrency)).
  - O(runtime=exec) runs O(command) directly. O(runtime=nspawn) runs
    C(systemd-nspawn --quiet --keep-unit --register=no -D ROOT --machine=O(name) [--bind=...]
    -- O(command)) (C(--boot) when O(command) is not given); O(env), O(user) and
    O(working_dir) then apply inside the container. The container shares the node's network,
    so the instance's ports are the node's.
  - An O(runtime=nspawn) instance runs on its own root, C(/var/lib/walle/instances/<name>/root)
    (C(/run/walle/instances/) when the node's disk is itself an overlay, as on lab nodes), an
    overlay (C(metacopy=on)) of the read-only unpacked O(image) and a per-instance upper
    layer, made fresh by C(ExecStartPre=) before each start and unmounted and removed by
    C(ExecStopPost=) after each stop. Instances of one image run side by side; what one
    writes, the others and the image never see.
  - Sandbox. An O(runtime=exec) service runs unprivileged and confined by default, with
    C(DynamicUser=yes) unless O(user) names a user, and the hardening baseline of
    C(walle_units.sandbox_directives) (C(NoNewPrivileges), C(ProtectSystem=strict) with
    C(StateDirectory=<name>), C(RuntimeDirectory=<name>) and O(working_dir) writable,
    C(ProtectHome), C(PrivateTmp), C(PrivateDevices) unless O(device_allow) grants devices,
    C(ProtectKernel*), C(ProtectControlGroups), C(ProtectClock), C(ProtectHostname),
    C(RestrictNamespaces), C(RestrictRealtime), C(RestrictSUIDSGID), C(LockPersonality),
    C(MemoryDenyWriteExecute) unless O(write_execute), an empty C(CapabilityBoundingSet) but
    for O(capabilities), C(SystemCallFilter=@system-service ~@privileged),
    C(SystemCallArchitectures=native), C(RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX),
    C(UMask=0077)). O(privileged=true) renders none of it and allows O(user=root); whether a
    job may ask for that is the scheduler's cluster policy, not this module's.
  - O(runtime=nspawn) runs the container in a user namespace (C(--private-users=pick
    --private-users-ownership=chown), the chown done in the instance's overlay only), so root
    inside it is an unprivileged uid range on the node, one range per running instance.
    The image is a directory inside O(image_store); O(pre_stop) runs inside the container.
  - O(runtime=lxc) runs an unprivileged LXC application container (Debian package C(lxc),
    5.0) in the foreground as the unit's main process, C(lxc-start -F -n <name> -P <folder>/lxc
    [-s lxc.environment=NAME...] [-s lxc.init.cwd=O(working_dir)] -- O(command) O(args)), on
    its own root, C(/var/lib/walle/lxc/<name>/root) (C(/run/walle/lxc/) when the node's disk is
    an overlay). That root is the same per-instance overlay of the shared O(image) as nspawn's,
    whose ownership C(ExecStartPre=) shifts into a uid/gid range of the instance's own (65536
    ids from 0x70000000, one lock file each under C(/run/walle/lxc-ids)), so root inside is an
    unprivileged range on the node.
  - The lxc configuration is fixed text, written before each start and removed with the root
    after each stop. It includes LXC's C(common.conf) and C(userns.conf) and sets
    C(lxc.idmap), C(lxc.net.0.type = none) (the node's network, so the instance's ports are the
    node's) and C(lxc.cgroup.relative = 1) (LXC's cgroups stay inside the unit's,
    C(Delegate=yes), so the slice's limits hold for the container). O(env) goes into the
    unit's C(Environment=) and lxc passes each variable on by name.
  - With O(runtime=lxc), O(command) is the container's PID 1. The stop signal reaches it through
    C(lxc-start) (C(KillSignal=), C(KillMode=mixed)) and, as for any PID 1, ends it only if it
    handles that signal; otherwise C(SIGKILL) follows O(stop_timeout). O(pre_stop) runs inside
    the container with C(lxc-attach --clear-env) (O(env) kept).
  - O(credentials) are written root-only (directory 0700, files 0600) under
    C(/run/walle/credentials/<name>/) and loaded with C(LoadCredential=); the service reads
    C($CREDENTIALS_DIRECTORY/<credential>). Their values never enter a unit file, the result
    or the diff (the option is C(no_log)). A changed value restarts a running instance.
  - Unit files are written mode 0640 (root may read them; other users may not).
  - Every argument is quoted so systemd passes it literally (no word splitting, no C(%)
    specifier or C($VAR) expansion); values that cannot be made safe (control characters) fail.
  - Resources are not set here; they belong to the slice (see the walle_slice module), which
    changes them live without restarting the workload.
options:
  name:
    description: The unit stem, starting with V(walle-), for example V(walle-web-0); the
      units are C(<name>.service) and, for O(kind=cron), C(<name>.timer).
    type: str
    required: true
  slice:
    description: The instance slice the service runs in (written by walle_slice), for
      example V(walle-web-0.slice). Required unless O(state=absent).
    type: str
  state:
    description:
      - V(present) writes the units without starting or stopping anything.
      - V(started) writes them and starts the service (the timer for O(kind=cron)); a running
        one whose unit text changed is restarted (a replace). A batch that already ran in
        this boot with the same unit text is not started again.
      - V(stopped) writes them and stops the service (and the timer).
      - V(absent) stops the timer and service, removes both unit files and reloads systemd.
    type: str
    choices: [present, started, stopped, absent]
    default: started
  kind:
    description: What the instance is.
    type: str
    choices: [service, batch, cron]
    default: service
  runtime:
    description: How the command runs.
    type: str
    choices: [exec, nspawn, lxc]
    default: exec
  command:
    description:
      - O(runtime=exec) (required there unless O(state=absent)) the absolute path of the
        program. O(runtime=nspawn) the program inside the image; without it the image boots.
        O(runtime=lxc) (required there unless O(state=absent)) the program inside the image.
    type: str
  args:
    description:
      - Arguments after O(command), each passed literally, except the exact form
        C(${NAME}) of a variable named in O(expand_env) (exec runtime).
    type: list
    elements: str
    default: []
  expand_env:
    description:
      - Variables of O(env) whose exact form C(${NAME}) in O(args) systemd substitutes when
        the unit starts (the instance's dynamic ports, C(WALLE_PORT_<LABEL>)). Only names
        of the form C(WALLE_PORT_<LABEL>) that O(env) sets are allowed; every other C($) in
        O(args) reaches the program literally. The nspawn runtime substitutes nothing (its
        program reads the variables from its environment).
    type: list
    elements: str
    default: []
  env:
    description: Environment variables (C(Environment=), or C(--setenv) inside nspawn).
    type: dict
    default: {}
  environment_file:
    description: An absolute path for C(EnvironmentFile=) (read by systemd on the node).
    type: path
  user:
    description: The user the command runs as (C(User=), or C(--user) inside nspawn); not for
      O(runtime=lxc), whose command runs as the container's root.
    type: str
  working_dir:
    description: An absolute working directory (C(WorkingDirectory=), or C(--chdir)).
    type: str
  image:
    description:
      - O(runtime=nspawn) and O(runtime=lxc) (required there unless O(state=absent)) the
        machine image, a
        directory inside O(image_store), named relative to it (V(etl), V(team/web)) or by an
        absolute path under it. Paths outside the store (V(/), C(..), a symlink that leads
        out) are refused.
    type: str
  image_store:
    description: The node's image store, the only place O(image) may come from.
    type: path
    default: /var/lib/walle/images
  privileged:
    description: Run without the sandbox (as root unless O(user) says otherwise), with every
      capability and device. For jobs the cluster policy allows to be privileged.
    type: bool
    default: false
  capabilities:
    description: Capabilities the sandboxed service keeps (C(CapabilityBoundingSet=) and
      C(AmbientCapabilities=)), for example V(CAP_NET_BIND_SERVICE). Default none.
    type: list
    elements: str
    default: []
  device_allow:
    description: Devices the sandboxed service may use (C(DevicePolicy=closed) and one
      C(DeviceAllow=) each, the slice's GPU list); replaces C(PrivateDevices=yes).
    type: list
    elements: str
    default: []
  write_execute:
    description: Allow writable-and-executable memory (no C(MemoryDenyWriteExecute=)), for
      JIT runtimes such as Java, Node.js or PyPy.
    type: bool
    default: false
  credentials:
    description: Secrets as credential name -> value, delivered with C(LoadCredential=)
      from root-only files; never logged, never in the unit, the result or the diff.
      O(runtime=exec) only.
    type: dict
    default: {}
  binds:
    description: O(runtime=nspawn) bind mounts, each C(SRC[:DST[:OPTIONS]]) as for
      C(systemd-nspawn --bind=).
    type: list
    elements: str
    default: []
  restart:
    description: C(Restart=) of a O(kind=service); batch always uses V(on-failure).
    type: str
    choices: [always, on-failure, "no"]
    default: on-failure
  retries:
    description:
      - O(kind=batch) attempts in all (C(StartLimitBurst=)) before it stays failed.
      - O(kind=cron) how many times a failed run is tried again (0..100), so 1 + O(retries)
        attempts per run; the next run the timer starts begins again at attempt 1. Retries
        need walle-cron-record on the node (the node role installs it).
      - Default V(3) for O(kind=batch), V(0) for O(kind=cron).
    type: int
  retry_delay:
    description: O(kind=cron) seconds between a failed attempt and its retry (C(RestartSec=)).
    type: float
    default: 5
  concurrency:
    description:
      - O(kind=cron) when the timer fires while the previous run is still going.
      - V(forbid) skips the new run (systemd never starts a second instance of an active
        unit).
      - V(replace) stops the running one (its stop signal and timeout apply) and starts the
        new one, through C(<name>-replace.service) (C(systemctl --no-block restart)).
      - V(allow) runs them side by side, at most O(max_runs) at once. The service is the
        template C(<name>@.service); the timer starts C(<name>-launch.service), a fixed
        script that starts a new run C(<name>@<run>.service) (the run id is the UTC time and
        a pid) unless O(max_runs) runs are starting, running, waiting for a retry or stopping,
        in which case the fire is skipped (a line in its journal). Each run is its own unit,
        with its own retries and history entries (C(run) in them), in the same slice (the
        runs share the slice's limits). Not for O(runtime=nspawn) (one root per instance).
    type: str
    choices: [forbid, replace, allow]
    default: forbid
  max_runs:
    description:
      - O(concurrency=allow) only. How many runs of the instance may go at once (1..20).
      - Default V(3).
    type: int
  history:
    description:
      - O(kind=cron) only. Where walle-cron-record appends each attempt (start, end, result,
        exit status, node, attempt number), a JSON list bounded to O(history.keep) entries.
      - It runs outside the job's sandbox as root (it reads the node's token); a write that
        fails within O(history.deadline) is logged, never turns the run into a failure.
    type: dict
    suboptions:
      consul_addr:
        description: The Consul HTTP address as seen from the node.
        type: str
        required: true
      key:
        description: The KV key, V(walle/runs/<job>/<slot>).
        type: str
        required: true
      node:
        description: This node's name, recorded with each run.
        type: str
        required: true
      token_file:
        description: A root-only file on the node holding the ACL token.
        type: path
      ca_path:
        description: CA certificate file for an V(https://) O(history.consul_addr).
        type: path
      deadline:
        description: Seconds to keep trying to write the history.
        type: float
        default: 10
      keep:
        description: How many runs the key keeps (the oldest go first).
        type: int
        default: 10
  schedule:
    description: O(kind=cron) (required there unless O(state=absent)) the C(OnCalendar=)
      expression, for example V(*-*-* 02:00:00) or V(hourly).
    type: str
  stop_signal:
    description: C(KillSignal=), for example V(SIGTERM) or V(SIGINT) (for nspawn, the signal
      given to the container's PID 1 with C(--kill-signal); for lxc, the signal C(lxc-start)
      forwards to it).
    type: str
    default: SIGTERM
  stop_timeout:
    description: C(TimeoutStopSec=) in seconds, after which C(SIGKILL) is sent.
    type: float
    default: 30
  pre_stop:
    description:
      - The graceful stop hook, an argv (absolute program path first) run as C(ExecStop=)
        before the stop signal, in the service's sandbox. For O(runtime=nspawn) and
        O(runtime=lxc) (through C(lxc-attach)) it runs inside the container (its namespaces,
        as the container's root, which the user namespace maps to an unprivileged uid), never
        on the node.
      - Not for O(kind=cron).
    type: list
    elements: str
    default: []
  description:
    description: C(Description=) of the units. Default V(Walle workload <name>).
    type: str
  commit:
    description:
      - For O(kind=batch) only. Where a successful run is recorded in Consul KV, so the
        scheduler never runs it again once it finished, even if the node dies right after.
      - The unit runs C(/usr/local/libexec/walle/walle-batch-commit) (installed by the node
        role) as C(ExecStopPost=+), that is after the job ended and outside its sandbox, so
        the job never sees the node's token. It writes only when the job exited by itself
        with status 0; when Consul cannot be reached within O(commit.deadline) the unit
        fails (retried).
      - Without it a batch unit keeps C(RemainAfterExit=yes), so its outcome stays readable from
        systemd until it is stopped.
    type: dict
    suboptions:
      consul_addr:
        description: The Consul HTTP address as seen from the node.
        type: str
        required: true
      key:
        description: The KV key, V(walle/done/<job>/<slot>).
        type: str
        required: true
      node:
        description: This node's name, recorded with the commit.
        type: str
        required: true
      attempt:
        description: Which placement of the slot this run is (the scheduler compares it).
        type: str
        required: true
      token_file:
        description: A root-only file on the node holding the ACL token.
        type: path
      ca_path:
        description: CA certificate file for an V(https://) O(commit.consul_addr).
        type: path
      deadline:
        description: Seconds to keep trying to reach Consul before the run counts as failed.
        type: float
        default: 20
attributes:
  check_mode:
    support: full
    description: Reports what would change; runs only read-only C(systemctl show).
  diff_mode:
    support: full
    description: The text before and after of each unit that changes.
  platform:
    support: full
    platforms: posix
    description: Runs on the node (Linux with systemd), not on the controller.
notes:
  - Needs systemd as PID 1 on the node. Units are not enabled; the scheduler decides where an
    instance runs after a node reboots.
  - C(KillMode=) keeps systemd's default (control-group) for exec; nspawn and lxc use V(mixed)
    and C(Delegate=yes) like systemd's own C(systemd-nspawn@.service) and lxc's
    C(lxc@.service).
seealso:
  - module: walle.pool.walle_slice
  - module: walle.pool.walle_facts
author:
  - Walle authors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: A web server instance with a graceful drain hook
  walle_workload:
    name: walle-web-0
    slice: walle-web-0.slice
    command: /usr/bin/python3
    args: [-m, http.server, "8080"]
    env: {GREETING: "hello $USER, 100%"}
    restart: always
    pre_stop: [/usr/local/bin/drain, --wait, "5"]
    stop_timeout: 20

- name: A nightly cron instance
  walle_workload:
    name: walle-report-0
    slice: walle-report-0.slice
    kind: cron
    schedule: "*-*-* 02:00:00"
    command: /usr/local/bin/report

- name: A batch job in a container image
  walle_workload:
    name: walle-etl-0
    slice: walle-etl-0.slice
    kind: batch
    retries: 5
    runtime: nspawn
    image: etl            # /var/lib/walle/images/etl
    binds: [/srv/data:/data:ro]
    command: /opt/etl/run

- name: An unprivileged LXC container from the same kind of image
  walle_workload:
    name: walle-api-0
    slice: walle-api-0.slice
    runtime: lxc
    image: sha256-0f3a...   # the unpacked image's folder in the store (walle_image)
    command: /usr/bin/python3
    args: [-m, http.server, "8080"]
    pre_stop: [/usr/local/bin/drain]
    stop_signal: SIGINT

- name: Remove an instance
  walle_workload:
    name: walle-web-0
    state: absent
"""

RETURN = r"""
units:
  description: The unit names of the instance (written, or removed for O(state=absent));
    C(<name>-replace.service) too for O(concurrency=replace); C(<name>@.service),
    C(<name>.timer) and C(<name>-launch.service) for O(concurrency=allow).
  returned: always
  type: list
  elements: str
  sample: ["walle-web-0.service"]
active_state:
  description: C(ActiveState) of the service (of the timer for O(kind=cron)) after the task;
    in check mode, before it.
  returned: always
  type: str
  sample: active
main_pid:
  description: C(MainPID) of the service, 0 when it is not running.
  returned: always
  type: int
  sample: 4242
restarted:
  description: Whether a running instance was restarted because its unit text or a
    credential changed.
  returned: always
  type: bool
  sample: false
credentials:
  description: The names (never the values) of the credentials the instance has.
  returned: always
  type: list
  elements: str
  sample: ["db_password"]
"""

import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.walle.pool.plugins.module_utils.walle_grammar import (  # noqa: E402
    DEFAULT_MAX_RUNS,
    MAX_RUNS,
)
from ansible_collections.walle.pool.plugins.module_utils.walle_systemd import (  # noqa: E402
    ACTIVE_STATES,
    Systemd,
    WalleError,
    run_and_exit,
    value_error,
)
from ansible_collections.walle.pool.plugins.module_utils.walle_units import (  # noqa: E402
    LXC_INSTANCES_DIR,
    LXC_RUNTIME_INSTANCES_DIR,
    NSPAWN_INSTANCES_DIR,
    ROOT_USERS,
    check_text,
    launch_unit,
    lxc_argv,
    lxc_instance,
    lxc_pre_stop,
    nspawn_instance_root,
    quote_env,
    render_launch,
    render_replace,
    render_service,
    render_timer,
    replace_unit,
    run_template,
)

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    slice=dict(type="str"),
    state=dict(type="str", choices=["present", "started", "stopped", "absent"],
               default="started"),
    kind=dict(type="str", choices=["service", "batch", "cron"], default="service"),
    runtime=dict(type="str", choices=["exec", "nspawn", "lxc"], default="exec"),
    command=dict(type="str"),
    args=dict(type="list", elements="str", default=[]),
    expand_env=dict(type="list", elements="str", default=[]),
    env=dict(type="dict", default={}),
    environment_file=dict(type="path"),
    user=dict(type="str"),
    working_dir=dict(type="str"),
    image=dict(type="str"),
    image_store=dict(type="path", default="/var/lib/walle/images"),
    privileged=dict(type="bool", default=False),
    capabilities=dict(type="list", elements="str", default=[]),
    device_allow=dict(type="list", elements="str", default=[]),
    write_execute=dict(type="bool", default=False),
    credentials=dict(type="dict", default={}, no_log=True),
    binds=dict(type="list", elements="str", default=[]),
    restart=dict(type="str", choices=["always", "on-failure", "no"], default="on-failure"),
    retries=dict(type="int"),
    retry_delay=dict(type="float", default=5.0),
    concurrency=dict(type="str", choices=["forbid", "replace", "allow"], default="forbid"),
    max_runs=dict(type="int"),
    history=dict(type="dict", options=dict(
        consul_addr=dict(type="str", required=True),
        key=dict(type="str", required=True, no_log=False),  # a KV key name, not a secret
        node=dict(type="str", required=True),
        token_file=dict(type="path"),
        ca_path=dict(type="path"),
        deadline=dict(type="float", default=10.0),
        keep=dict(type="int", default=10),
    )),
    schedule=dict(type="str"),
    stop_signal=dict(type="str", default="SIGTERM"),
    stop_timeout=dict(type="float", default=30.0),
    pre_stop=dict(type="list", elements="str", default=[]),
    description=dict(type="str"),
    commit=dict(type="dict", options=dict(
        consul_addr=dict(type="str", required=True),
        key=dict(type="str", required=True, no_log=False),  # a KV key name, not a secret
        node=dict(type="str", required=True),
        attempt=dict(type="str", required=True),
        token_file=dict(type="path"),
        ca_path=dict(type="path"),
        deadline=dict(type="float", default=20.0),
    )),
)
REQUIRED_IF = [
    ("state", "present", ["slice"]),
    ("state", "started", ["slice"]),
    ("state", "stopped", ["slice"]),
]
SHOW_PROPS = ("ActiveState", "SubState", "MainPID", "InactiveExitTimestampMonotonic")
BATCH_COMMIT_PROGRAM = "/usr/local/libexec/walle/walle-batch-commit"  # roles/node installs it
CRON_RECORD_PROGRAM = "/usr/local/libexec/walle/walle-cron-record"  # roles/node installs it
COMMIT_KEY = re.compile(r"^walle/done/[a-z][a-z0-9-]{0,62}/[0-9]{1,6}$")
HISTORY_KEY = re.compile(r"^walle/runs/[a-z][a-z0-9-]{0,62}/[0-9]{1,6}$")
COMMIT_WORD = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
CREDENTIALS_DIR = "/run/walle/credentials"  # tmpfs: secrets never reach the node's disk
MOUNTINFO = "/proc/self/mountinfo"
NSPAWN_RUNTIME_INSTANCES_DIR = "/run/walle/instances"  # instances_base()
# ExecStop= of an nspawn instance: enter the container (the child of systemd-nspawn whose
# innermost pid is 1) with all its namespaces, user namespace included, and run the hook
# there. The script is fixed text; the hook's argv follows as positional arguments, and
# $MAINPID comes from systemd's environment for ExecStop=.
NSPAWN_EXEC_STOP = (
    'for p in $(cat /proc/"$MAINPID"/task/*/children); do '
    'if grep -qE "^NSpid:.*[[:space:]]1$" /proc/"$p"/status; then '
    'exec nsenter --target "$p" --all -- "$@"; fi; done; '
    'echo "walle: no container under pid $MAINPID" >&2; exit 1'
)


def _require(params: dict, option: str, why: str) -> None:
    if not params[option]:
        raise WalleError(f"{option}: required when {why} (and state is not absent)", option)


def check_params(params: dict) -> None:
    """Rules that depend on two options at once (state=absent needs none of them)."""
    if params["retries"] is None:  # a cron run is not retried unless asked (it needs the hook)
        params["retries"] = 0 if params["kind"] == "cron" else 3
    runtime = params["runtime"]
    if runtime == "exec":
        _require(params, "command", "runtime=exec")
    else:
        _require(params, "image", f"runtime={runtime}")
    if runtime == "lxc":
        _require(params, "command", "runtime=lxc (an lxc instance runs a program of its image)")
        for option in ("binds", "user"):
            if params[option]:
                raise WalleError(f"{option}: not for runtime=lxc (its command runs as the "
                                 "container's root, an unprivileged uid range on the node, "
                                 "on the image's own files); remove it", option)
    if params["kind"] == "cron":
        _require(params, "schedule", "kind=cron")
        if params["pre_stop"]:
            raise WalleError("pre_stop: not supported for kind=cron (a oneshot has no graceful "
                             "stop); remove it", "pre_stop")
    elif params["schedule"]:
        raise WalleError(f"schedule: only for kind=cron, got kind={params['kind']}", "schedule")
    if params["runtime"] == "exec" and params["binds"]:
        raise WalleError("binds: only for runtime=nspawn", "binds")
    if params["commit"] and params["kind"] != "batch":
        raise WalleError(f"commit: only for kind=batch, got kind={params['kind']}", "commit")
    if params["kind"] != "cron":
        if params["history"]:
            raise WalleError(f"history: only for kind=cron, got kind={params['kind']}",
                             "history")
        if params["concurrency"] != "forbid":
            raise WalleError(f"concurrency: only for kind=cron, got kind={params['kind']}",
                             "concurrency")
    elif not 0 <= params["retries"] <= 100:
        raise WalleError(f"retries: must be 0..100 for kind=cron, got {params['retries']}",
                         "retries")
    if params["concurrency"] != "allow":
        if params["max_runs"] is not None:
            raise WalleError("max_runs: only for concurrency=allow (forbid and replace run one "
                             "at a time); remove it", "max_runs")
    else:
        if params["max_runs"] is None:
            params["max_runs"] = DEFAULT_MAX_RUNS
        if not 1 <= params["max_runs"] <= MAX_RUNS:
            raise WalleError(f"max_runs: must be 1..{MAX_RUNS}, got {params['max_runs']}",
                             "max_runs")
        if params["runtime"] != "exec":
            raise WalleError(f"concurrency: allow is not for runtime={params['runtime']} (one "
                             "container root and name per instance); use forbid or replace",
                             "concurrency")
    if runtime != "exec":
        for option in ("capabilities", "device_allow", "credentials", "write_execute",
                       "privileged"):
            if params[option]:
                raise WalleError(f"{option}: only for runtime=exec (an {runtime} container is "
                                 "confined by its user namespace)", option)
    elif params["privileged"]:
        for option in ("capabilities", "device_allow"):
            if params[option]:
                raise WalleError(f"{option}: a privileged workload already has every "
                                 "capability and device; drop it", option)
    elif params["user"] in ROOT_USERS:
        raise WalleError("user: root needs privileged=true (a root workload is not "
                         "sandboxed); run as an unprivileged user or drop user for a "
                         "dynamic one", "user")


def image_path(params: dict) -> str:
    """The image directory inside the store; refuses anything that resolves outside it."""
    image, store = params["image"], params["image_store"]
    check_text("image", image)
    check_text("image_store", store)
    if not os.path.isabs(store):
        raise WalleError(f"image_store: must be an absolute path, got {store!r}", "image_store")
    path = image if os.path.isabs(image) else os.path.join(store, image)
    real_store = os.path.realpath(store)
    real = os.path.realpath(path)
    if os.path.commonpath([real_store, real]) != real_store or real == real_store:
        raise WalleError(f"image: {image!r} is outside the image store {store}; name an "
                         f"image directory inside it (e.g. {store}/<name>)", "image")
    if not os.path.isdir(real):
        raise WalleError(f"image: {real} is not a directory on the node (put the image in "
                         f"the store {store})", "image")
    return real


def _string_env(env: dict) -> dict[str, str]:
    out = {}
    for key, value in env.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise WalleError(f"env.{key}: values must be strings, got {value!r}", "env")
        out[str(key)] = str(value)
    return out


def nspawn_argv(nspawn: str, params: dict, env: dict[str, str], root: str) -> list[str]:
    """systemd-nspawn's argv for the instance, on its own root (nspawn_instance_root): a user
    namespace with a uid range picked per instance (the root's ownership is shifted to it,
    in the instance's overlay only), the node's network (the instance's ports are the
    node's), the instance id as machine and host name."""
    for option in ("user", "working_dir"):
        if params[option] is not None:
            check_text(option, params[option])
    for i, bind in enumerate(params["binds"]):
        check_text(f"binds[{i}]", bind)
    argv = [nspawn, "--quiet", "--keep-unit", "--register=no", "-D", root,
            f"--machine={machine_name(params['name'])}",
            "--private-users=pick", "--private-users-ownership=chown"]
    argv += [f"--bind={bind}" for bind in params["binds"]]
    # Inside the container, not for the nspawn process itself.
    argv += [f"--setenv={key}={value}" for key, value in sorted(env.items())]
    if params["user"]:
        argv.append(f"--user={params['user']}")
    if params["working_dir"]:
        argv.append(f"--chdir={params['working_dir']}")
    argv.append(f"--kill-signal={params['stop_signal']}")
    if params["command"]:
        return argv + ["--", params["command"], *params["args"]]
    if params["args"]:
        raise WalleError("args: runtime=nspawn without a command boots the image; "
                         "give command or drop args", "args")
    return argv + ["--boot"]


def lxc_service(params: dict, common: dict, env: dict[str, str],
                lxc_start: str | None) -> dict:
    """render_service's arguments for an lxc instance: `lxc-start -F` on its own overlay root
    in its own uid range (lxc_instance), the job's environment in the unit (read by lxc by
    name), the hook through lxc-attach, Delegate=yes for LXC's cgroups inside the unit's."""
    if not lxc_start:
        raise WalleError("runtime=lxc: lxc-start not found on the node (Debian package lxc)",
                         "runtime")
    if params["expand_env"]:
        raise WalleError("expand_env: only the exec runtime substitutes variables in args; an "
                         "lxc program reads them from its environment", "expand_env")
    box = lxc_instance(params["name"], image_path(params),
                       instances_base(path=LXC_INSTANCES_DIR,
                                      fallback=LXC_RUNTIME_INSTANCES_DIR))
    names = sorted(env)
    lxc_attach = os.path.join(os.path.dirname(lxc_start), "lxc-attach")
    return dict(common, env=env,
                argv=lxc_argv(lxc_start, box, params["command"], params["args"], names,
                              params["working_dir"]),
                stop_signal=params["stop_signal"], kill_mode="mixed", delegate=True,
                sandbox=False, pre_stop=lxc_pre_stop(lxc_attach, box, params["pre_stop"],
                                                     names),
                pre_start=box["setup"], cleanup=box["teardown"])


def render_units(params: dict, nspawn_bin: str | None,
                 lxc_start: str | None = None) -> dict[str, str]:
    """unit name -> text for the instance described by params (`nspawn_bin`, `lxc_start`:
    the runtimes' programs found on the node)."""
    name, kind = params["name"], params["kind"]
    env = _string_env(params["env"])
    common = dict(slice=params["slice"], description=params["description"],
                  environment_file=params["environment_file"], pre_stop=params["pre_stop"],
                  stop_timeout=params["stop_timeout"])
    try:
        for key in env:
            quote_env(key, env[key])  # validates names and values for both runtimes
        if params["runtime"] == "nspawn":
            if not nspawn_bin:
                raise WalleError("runtime=nspawn: systemd-nspawn not found on the node "
                                 "(Debian package systemd-container)", "runtime")
            if params["expand_env"]:
                raise WalleError("expand_env: only the exec runtime substitutes variables in "
                                 "args; an nspawn program reads them from its environment",
                                 "expand_env")
            root = nspawn_instance_root(name, image_path(params), instances_base())
            service = dict(common, argv=nspawn_argv(nspawn_bin, params, env, root["root"]),
                           stop_signal="SIGTERM", kill_mode="mixed", delegate=True,
                           sandbox=False, pre_stop=nspawn_pre_stop(params["pre_stop"]),
                           pre_start=[root["setup"]], cleanup=root["teardown"])
            service_type = "notify"
        elif params["runtime"] == "lxc":
            service = lxc_service(params, common, env, lxc_start)
            service_type = "exec"
        else:
            service = dict(common, argv=[params["command"], *params["args"]], env=env,
                           expand_env=params["expand_env"], user=params["user"],
                           working_dir=params["working_dir"],
                           stop_signal=params["stop_signal"],
                           sandbox=not params["privileged"],
                           capabilities=params["capabilities"],
                           device_allow=params["device_allow"],
                           write_execute=params["write_execute"],
                           credentials=credential_paths(name, params["credentials"]))
            service_type = "exec"
        if kind == "service":
            service.update(service_type=service_type, restart=params["restart"])
        elif kind == "batch":
            # With a commit, a finished run is recorded in Consul by ExecStopPost (which runs
            # at exit only without RemainAfterExit). Without one, RemainAfterExit keeps a
            # finished run visible (active, exited) instead of unloaded, so a new leader can
            # tell it from one that never started.
            commit = commit_argv(params["commit"])
            service.update(service_type=service_type, restart="on-failure",
                           start_limit_burst=params["retries"], remain_after_exit=not commit,
                           post_stop=commit)
        else:
            service.update(service_type="oneshot", **cron_retries(params))
        allow = kind == "cron" and params["concurrency"] == "allow"
        if allow:
            units = {run_template(name): render_service(name, run_template=True, **service)}
        else:
            units = {f"{name}.service": render_service(name, **service)}
        if kind == "cron":
            replace = params["concurrency"] == "replace"
            units[f"{name}.timer"] = render_timer(name, schedule=params["schedule"],
                                                  description=params["description"],
                                                  replace=replace, launch=allow)
            if replace:
                units[replace_unit(name)] = render_replace(name)
            if allow:
                units[launch_unit(name)] = render_launch(name, max_runs=params["max_runs"])
    except ValueError as exc:
        raise value_error(exc) from exc
    return units


def cron_retries(params: dict) -> dict:
    """A cron run's retries: Restart=on-failure every retry_delay, bounded by
    walle-cron-record (ExecStopPost=+), which also writes the run history when asked."""
    if params["retries"] == 0 and not params["history"]:
        return {}
    # concurrency=allow: the run's own unit (`--unit %n`) is appended by render_service
    own = [] if params["concurrency"] == "allow" else ["--unit", f"{params['name']}.service"]
    argv = [CRON_RECORD_PROGRAM, *own, "--retries", str(params["retries"])]
    history = params["history"]
    if history:
        if not HISTORY_KEY.match(history["key"]):
            raise WalleError(f"history.key: {history['key']!r} is not walle/runs/<job>/<slot>",
                             "history")
        if not COMMIT_WORD.match(history["node"]):
            raise WalleError(f"history.node: {history['node']!r} must be 1-128 letters, "
                             "digits or ._:-", "history")
        if not re.match(r"^https?://[^\s/]+/?$", history["consul_addr"]):
            raise WalleError(f"history.consul_addr: {history['consul_addr']!r} is not "
                             "http(s)://host:port", "history")
        if not 0 < history["deadline"] <= 60 or not 1 <= history["keep"] <= 100:
            raise WalleError("history: deadline must be in (0, 60] seconds and keep 1..100",
                             "history")
        argv += ["--consul-addr", history["consul_addr"], "--key", history["key"],
                 "--node", history["node"], "--deadline", f"{history['deadline']:g}",
                 "--keep", str(history["keep"])]
        for option, field in (("--token-file", "token_file"), ("--ca-file", "ca_path")):
            if history.get(field):
                argv += [option, history[field]]
    out = {"post_stop": argv}
    if params["retries"]:
        out.update(restart="on-failure", restart_delay=params["retry_delay"])
    return out


def commit_argv(commit: dict | None) -> list[str] | None:
    """The batch commit helper's argv (ExecStopPost=+), every value checked: it runs as root."""
    if not commit:
        return None
    if not COMMIT_KEY.match(commit["key"]):
        raise WalleError(f"commit.key: {commit['key']!r} is not walle/done/<job>/<slot>",
                         "commit")
    for field in ("node", "attempt"):
        if not COMMIT_WORD.match(commit[field]):
            raise WalleError(f"commit.{field}: {commit[field]!r} must be 1-128 letters, digits "
                             "or ._:-", "commit")
    if not re.match(r"^https?://[^\s/]+/?$", commit["consul_addr"]):
        raise WalleError(f"commit.consul_addr: {commit['consul_addr']!r} is not "
                         "http(s)://host:port", "commit")
    if not 0 < commit["deadline"] <= 3600:
        raise WalleError("commit.deadline: must be between 0 and 3600 seconds", "commit")
    argv = [BATCH_COMMIT_PROGRAM, "--consul-addr", commit["consul_addr"], "--key",
            commit["key"], "--node", commit["node"], "--attempt", commit["attempt"],
            "--deadline", f"{commit['deadline']:g}"]
    for option, field in (("--token-file", "token_file"), ("--ca-file", "ca_path")):
        if commit.get(field):
            argv += [option, commit[field]]
    return argv


def instances_base(mountinfo: str | None = None, path: str = NSPAWN_INSTANCES_DIR,
                   fallback: str = NSPAWN_RUNTIME_INSTANCES_DIR) -> str:
    """Where container instance roots live (`path`: nspawn's, or lxc's LXC_INSTANCES_DIR): on
    the node's disk, unless that disk is itself an overlayfs (a lab node booted from an
    overlay of the cached rootfs), which overlayfs cannot use as an upper layer: then on
    `fallback` under /run (tmpfs, charged to the instance's memory)."""
    preferred = path
    while not os.path.exists(path):
        path = os.path.dirname(path)
    path = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open(mountinfo or MOUNTINFO, encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if "-" not in fields:
                    continue
                point = fields[4].replace("\\040", " ")
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, fields[fields.index("-") + 1]
    except OSError:
        return preferred
    return fallback if fstype == "overlay" else preferred


def machine_name(name: str) -> str:
    """The container's machine (and host) name: the unit stem as a valid host name."""
    return re.sub(r"[^A-Za-z0-9-]", "-", name)[:64].strip("-") or "walle"


def nspawn_pre_stop(pre_stop: list[str]) -> list[str] | None:
    """The hook's ExecStop= argv for an nspawn instance: run inside the container."""
    if not pre_stop:
        return None
    if not pre_stop[0].startswith("/"):
        raise WalleError(f"pre_stop: the program must be an absolute path, got {pre_stop[0]!r}",
                         "pre_stop")
    return ["/bin/sh", "-c", NSPAWN_EXEC_STOP, "walle-pre-stop", *pre_stop]


def credential_dir(name: str) -> str:
    return os.path.join(CREDENTIALS_DIR, name)


def credential_paths(name: str, credentials: dict) -> dict[str, str]:
    """credential name -> its root-only file on the node (what LoadCredential= reads)."""
    return {str(key): os.path.join(credential_dir(name), str(key)) for key in credentials}


def _credential_values(credentials: dict) -> dict[str, bytes]:
    out = {}
    for key, value in credentials.items():
        if not isinstance(value, str):
            raise WalleError(f"credentials.{key}: values must be strings", "credentials")
        out[str(key)] = value.encode("utf-8")
    return out


def stale_credentials(name: str, credentials: dict) -> list[str]:
    """Names whose file is missing, differs, or should not be there (compared, not shown)."""
    wanted = _credential_values(credentials)
    folder = credential_dir(name)
    present = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    changed = sorted(key for key in present - set(wanted))
    for key, value in wanted.items():
        try:
            with open(os.path.join(folder, key), "rb") as handle:
                same = handle.read() == value
        except FileNotFoundError:
            same = False
        if not same:
            changed.append(key)
    return sorted(changed)


def write_credentials(name: str, credentials: dict) -> None:
    """Root-only files (0700 folder, 0600 files, written through a temp file), stale ones
    removed. The folder lives on /run (tmpfs)."""
    wanted = _credential_values(credentials)
    folder = credential_dir(name)
    os.makedirs(CREDENTIALS_DIR, mode=0o700, exist_ok=True)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    for stale in set(os.listdir(folder)) - set(wanted):
        os.unlink(os.path.join(folder, stale))
    for key, value in wanted.items():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, value)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(folder, key))


def remove_credentials(name: str) -> bool:
    folder = credential_dir(name)
    if not os.path.isdir(folder):
        return False
    shutil.rmtree(folder)
    return True


def _diff(systemd: Systemd, before: dict, after: dict) -> list[dict]:
    return [dict(before_header=systemd.unit_path(u), after_header=systemd.unit_path(u),
                 before=before.get(u) or "", after=after.get(u) or "")
            for u in sorted(set(before) | set(after)) if before.get(u) != after.get(u)]


def cron_units(name: str) -> list[str]:
    """Every unit file an instance of any kind and concurrency may have, timer first (so it
    fires nothing while the others stop), then what it starts."""
    return [f"{name}.timer", replace_unit(name), launch_unit(name), f"{name}.service",
            run_template(name)]


def runs_of(systemd: Systemd, name: str) -> dict[str, str]:
    """The loaded runs of a concurrency=allow instance, `<name>@<run>.service` -> state."""
    return systemd.list_units(f"{name}@*.service")


def run_absent(module, systemd: Systemd, name: str) -> dict:
    units = cron_units(name)
    current = {u: systemd.read_unit(u) for u in units}
    present = [u for u in units if current[u] is not None]
    runs = runs_of(systemd, name) if current[run_template(name)] is not None else {}
    active = [u for u in units if u != run_template(name) and systemd.is_active(u)]
    active += sorted(u for u, state in runs.items() if state in ACTIVE_STATES)
    secrets = os.path.isdir(credential_dir(name))
    result = dict(changed=bool(present or active or secrets), units=present, restarted=False,
                  active_state="inactive", main_pid=0, credentials=[])
    if module._diff and present:
        result["diff"] = _diff(systemd, current, {})
    if module.check_mode or not result["changed"]:
        return result
    for unit in active:
        systemd.systemctl_run("stop", unit)
    for unit in present:
        systemd.remove_unit(unit)
    if present:
        systemd.daemon_reload()
    remove_credentials(name)
    for unit in [u for u in units if u != run_template(name)] + sorted(runs):
        # a failed unit stays loaded until its failure is forgotten
        if systemd.show(unit, ("ActiveState",)).get("ActiveState") == "failed":
            systemd.systemctl_run("reset-failed", unit)
    return result


def converge(module, systemd: Systemd, params: dict, changed_units: list[str]) -> dict:
    """Start, restart or stop the instance; returns what it did (check mode: would do)."""
    name, kind, state = params["name"], params["kind"], params["state"]
    primary = f"{name}.timer" if kind == "cron" else f"{name}.service"
    before = systemd.show(primary, SHOW_PROPS)
    active = before.get("ActiveState") in ACTIVE_STATES
    actions: list[tuple[str, ...]] = []
    if state == "started":
        if active and changed_units:
            actions.append(("restart", primary))
        elif not active and not _batch_done(kind, before, changed_units):
            if before.get("ActiveState") == "failed":
                actions.append(("reset-failed", primary))
            actions.append(("start", primary))
    elif state == "stopped":
        units = [primary] + ([f"{name}.service"] if kind == "cron" else [])
        if kind == "cron" and params["concurrency"] == "allow":
            units = [primary, launch_unit(name)]
            units += sorted(u for u, s in runs_of(systemd, name).items() if s in ACTIVE_STATES)
        actions += [("stop", u) for u in units if systemd.is_active(u)]
    if not module.check_mode:
        for action in actions:
            systemd.systemctl_run(*action)
    return dict(actions=actions, restarted=("restart", primary) in actions, before=before,
                primary=primary)


def _batch_done(kind: str, show: dict, changed_units: list[str]) -> bool:
    """A batch that already ran this boot (same unit text) is not started again."""
    return kind == "batch" and not changed_units and \
        show.get("InactiveExitTimestampMonotonic", "0") not in ("0", "")


def stale_cron_units(systemd: Systemd, params: dict, desired: dict[str, str]) -> list[str]:
    """The units of a cron instance's other concurrency policy (the replace unit after
    replace, the launcher and run template after allow, the single service after forbid or
    replace): removed with the other changes, after they stopped (stop_stale)."""
    if params["kind"] != "cron":
        return []
    name = params["name"]
    candidates = [replace_unit(name), launch_unit(name), f"{name}.service", run_template(name)]
    return [u for u in candidates if u not in desired and systemd.read_unit(u) is not None]


def stop_stale(systemd: Systemd, name: str, gone: list[str]) -> None:
    """Stop what runs of the units about to go: their running run(s) too, or they would keep
    running with no unit file behind them."""
    for unit in gone:
        if unit == run_template(name):
            for run, state in sorted(runs_of(systemd, name).items()):
                if state in ACTIVE_STATES:
                    systemd.systemctl_run("stop", run)
        elif systemd.is_active(unit):
            systemd.systemctl_run("stop", unit)


def run_module(module, systemd: Systemd) -> dict:
    params = module.params
    name = params["name"]
    if params["state"] == "absent":
        return run_absent(module, systemd, name)
    check_params(params)
    desired = render_units(params, module.get_bin_path("systemd-nspawn"),
                           module.get_bin_path("lxc-start"))
    current = {u: systemd.read_unit(u) for u in desired}
    changed_units = [u for u in desired if current[u] != desired[u]]
    gone = stale_cron_units(systemd, params, desired)
    current.update({u: systemd.read_unit(u) for u in gone})
    changed_units += gone
    changed_credentials = stale_credentials(name, params["credentials"])
    stale_timer = params["kind"] != "cron" and systemd.read_unit(f"{name}.timer") is not None
    if stale_timer:  # the instance was cron before: its timer must go, or it would fire
        raise WalleError(f"{name}.timer exists but kind={params['kind']}: remove the instance "
                         "(state=absent) before changing its kind", "kind")
    if changed_credentials and not module.check_mode:
        write_credentials(name, params["credentials"])
    if changed_units and not module.check_mode:
        stop_stale(systemd, name, gone)
        systemd.install_units({u: desired[u] for u in changed_units if u not in gone})
        for unit in gone:
            systemd.remove_unit(unit)
        systemd.daemon_reload()
    # A new secret value is read only at start: it restarts a running instance too.
    outcome = converge(module, systemd, params, changed_units + changed_credentials)
    result = dict(changed=bool(changed_units or changed_credentials or outcome["actions"]),
                  units=list(desired), restarted=outcome["restarted"],
                  credentials=sorted(params["credentials"]))
    if module._diff and changed_units:
        result["diff"] = _diff(systemd, {u: current[u] for u in changed_units},
                               {u: desired.get(u) for u in changed_units})
    after = outcome["before"]
    if outcome["actions"] and not module.check_mode:
        after = systemd.show(outcome["primary"], SHOW_PROPS)
    service = after if params["kind"] != "cron" else systemd.show(f"{name}.service", SHOW_PROPS)
    result["active_state"] = after.get("ActiveState", "unknown")
    result["main_pid"] = int(service.get("MainPID") or 0)
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF,
                           supports_check_mode=True)
    run_and_exit(module, run_module)


if __name__ == "__main__":
    main()
