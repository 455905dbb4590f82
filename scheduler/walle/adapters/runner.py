"""Run Walle's playbooks with ansible-runner (the only caller of ansible-runner).

One call = one ansible-playbook run over the hosts of one batch. Events are folded into one
`HostResult` per host as they stream in, and `on_host_done` fires as each host finishes, so
the caller can record allocations before the whole run ends. A failed or unreachable host
never fails the others; the playbooks catch a failed instance inside its host and report it
through a task named `INSTANCE_FAILED_TASK` (see docs/executor.md).

Every value handed to Ansible comes from a job, a node or Consul and is untrusted: the
extravars are written by `extravars_text` with every string tagged `!unsafe`, so Ansible never
evaluates one as a template, in any playbook. `walle exec` goes through the same path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import yaml

from walle.collection import ensure_collection

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
PLAYBOOK_DIR = REPO_ROOT / "playbooks"
# Task names the playbooks use to talk to this adapter.
HOST_DONE_TASK = "Walle: host done"
COMMAND_PLAYBOOK = "command.yml"  # run_command's playbook ...
COMMAND_TASK = "Walle: command"  # ... and its task whose results are the answers
INSTANCE_FAILED_TASK = "Walle: instance failed"
MAX_FORKS = 50
CANCEL_POLL_S = 0.1  # how often ansible-runner asks whether to cancel
SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=600s -o ServerAliveInterval=5"


@dataclass(frozen=True)
class TaskFailure:
    task: str
    msg: str
    item: str | None = None  # the loop item label, when the task ran in a loop


@dataclass
class HostResult:
    host: str
    ok: bool = False  # finished and nothing failed (rescued instance failures aside)
    failed: bool = False
    unreachable: bool = False
    changed: bool = False
    failed_tasks: list[TaskFailure] = field(default_factory=list)
    # Instances the playbook caught failing on this host (instance id -> error): the host
    # itself may still be ok and its other instances placed.
    failed_instances: dict[str, str] = field(default_factory=dict)
    done: bool = False


@dataclass(frozen=True)
class RunResult:
    status: str  # successful, failed, timeout, canceled
    rc: int
    hosts: dict[str, HostResult]
    duration: float
    output_tail: str = ""  # the end of ansible's output, for errors that carry no host

    @property
    def ok_hosts(self) -> list[str]:
        return sorted(h for h, r in self.hosts.items() if r.ok)

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(h for h, r in self.hosts.items() if not r.ok)


HostCallback = Callable[[str, HostResult], None]


class EventCollector:
    """Folds ansible-runner events into per-host results. Called synchronously by the runner,
    so it holds no locks; `on_host_done` fires at most once per host."""

    def __init__(self, expected_hosts: Iterable[str] = (),
                 on_host_done: HostCallback | None = None):
        self.hosts: dict[str, HostResult] = {h: HostResult(h) for h in expected_hosts}
        self._on_host_done = on_host_done
        self.play_started = False
        self._seen: set[str] = set()  # hosts any task event named

    def handle(self, event: Mapping[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_stats":
            self._apply_stats(data)
        elif kind == "playbook_on_play_start":
            self.play_started = True
        elif kind.startswith("runner_on_") or kind.startswith("runner_item_on_"):
            self._apply_host_event(kind, data)
        return False  # nothing needs the event files on disk

    def finish(self, reason: str, missing: str | None = None) -> dict[str, HostResult]:
        """Closes hosts that never finished (canceled, timed out, not in the inventory).
        `missing`: the reason of a host no event ever named ("<host> <missing>"), when the run
        went through its plays (so the play's host pattern did not match it)."""
        for result in self.hosts.values():
            if not result.done:
                unseen = missing is not None and result.host not in self._seen
                result.ok = False
                result.failed = True
                msg = f"{result.host} {missing}" if unseen else reason
                result.failed_tasks.append(TaskFailure("", msg))
                self._done(result)
        return self.hosts

    def _host(self, name: str) -> HostResult:
        return self.hosts.setdefault(name, HostResult(name))

    def _apply_host_event(self, kind: str, data: Mapping[str, Any]) -> None:
        host = data.get("host")
        if not host:
            return
        result = self._host(host)
        self._seen.add(host)
        res = data.get("res") or {}
        task = data.get("task", "")
        if res.get("changed"):
            result.changed = True
        if kind == "runner_on_ok":
            if task == INSTANCE_FAILED_TASK:
                self._record_instance_failure(result, res)
            elif task == HOST_DONE_TASK:
                result.ok = not result.failed and not result.unreachable
                self._done(result)
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            result.failed_tasks.append(TaskFailure(task, failure_message(res), _item(res)))
        elif kind == "runner_on_unreachable":
            result.unreachable = True
            result.ok = False
            result.failed_tasks.append(TaskFailure(task, failure_message(res), _item(res)))
            self._done(result)  # ansible drops an unreachable host from the play

    def _record_instance_failure(self, result: HostResult, res: Mapping[str, Any]) -> None:
        if isinstance(res.get("results"), list):  # the task ran in a loop: one per item
            for item in res["results"]:
                if isinstance(item, Mapping) and not item.get("skipped"):
                    self._record_instance_failure(result, item)
            return
        msg = res.get("msg")
        if isinstance(msg, Mapping) and msg.get("id"):
            result.failed_instances[str(msg["id"])] = str(msg.get("error", "failed"))
        else:
            log.warning("%s: malformed %r message: %r", result.host, INSTANCE_FAILED_TASK, msg)

    def _apply_stats(self, data: Mapping[str, Any]) -> None:
        counters = ("ok", "failures", "dark", "changed", "processed", "rescued", "skipped")
        names = set().union(*((data.get(c) or {}).keys() for c in counters))
        for name in sorted(names):
            result = self._host(name)
            result.failed = result.failed or bool((data.get("failures") or {}).get(name))
            result.unreachable = result.unreachable or bool((data.get("dark") or {}).get(name))
            result.changed = result.changed or bool((data.get("changed") or {}).get(name))
            result.ok = not (result.failed or result.unreachable)
            self._done(result)

    def _done(self, result: HostResult) -> None:
        if result.done:
            return
        result.done = True
        if self._on_host_done is None:
            return
        try:
            self._on_host_done(result.host, result)
        except Exception:  # a caller's bug must not kill the run of the other hosts
            log.exception("on_host_done failed for %s", result.host)


def failure_message(res: Mapping[str, Any]) -> str:
    """The most useful line of a failed module result (loop results: each failed item's)."""
    if isinstance(res.get("results"), list):
        parts = [f"{_item(r) or '?'}: {failure_message(r)}" for r in res["results"]
                 if isinstance(r, Mapping) and r.get("failed")]
        if parts:
            return "; ".join(parts)
    for key in ("msg", "stderr", "module_stderr", "stdout", "reason"):
        value = res.get(key)
        if value:
            return str(value).strip()[-2000:]
    return "failed (no message)"


def _item(res: Mapping[str, Any]) -> str | None:
    label = res.get("_ansible_item_label", res.get("item"))
    if isinstance(label, Mapping):
        inst = label.get("instance")
        label = inst.get("id") if isinstance(inst, Mapping) else label.get("id", label)
    return None if label is None else str(label)


def run_playbook(
    playbook: str,
    inventory: str | dict,
    extravars: dict,
    limit: list[str] | None,
    *,
    on_host_done: HostCallback | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    project_dir: Path = PLAYBOOK_DIR,
) -> RunResult:
    """Runs `playbook` (a file in `project_dir`) on `limit` (None: every host in the
    inventory). Blocks until the run ends; `cancel.set()` or `timeout` (seconds) stops it and
    the hosts that had not finished are reported failed."""
    if limit is not None and not limit:
        return RunResult("successful", 0, {}, 0.0)
    if not (project_dir / playbook).is_file():
        raise ValueError(f"playbook: {playbook!r} not found in {project_dir}")
    collector = EventCollector(limit or (), on_host_done)
    stop = _StopFlag(cancel, timeout)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="walle-runner-") as private_dir:
        kwargs = runner_args(playbook, inventory, extravars, limit, private_dir, project_dir)
        runner = ansible_runner.run(**kwargs, event_handler=collector.handle,
                                    cancel_callback=stop)
        output_tail = _tail(runner)
    status = "timeout" if stop.timed_out else runner.status
    hosts = collector.finish(f"run ended ({status}) before this host finished",
                             missing=_missing_reason(inventory, status, collector))
    return RunResult(status, runner.rc if runner.rc is not None else -1, hosts,
                     time.monotonic() - started, output_tail)


def _missing_reason(inventory: str | dict, status: str,
                    collector: EventCollector) -> str | None:
    """Why a host of the limit got no event in a run that went through its plays: Ansible
    did not match it, so it is not in the inventory (for the walle_consul inventory: not in
    Consul's catalog now)."""
    if status in ("timeout", "canceled") or not collector.play_started:
        return None
    where = inventory if isinstance(inventory, str) else "given"
    return (f"is not in the inventory ({where}); check with "
            f"`ansible-inventory -i {where} --graph`")


def runner_args(
    playbook: str,
    inventory: str | dict,
    extravars: Mapping[str, Any],
    limit: list[str] | None,
    private_dir: str,
    project_dir: Path = PLAYBOOK_DIR,
) -> dict[str, Any]:
    """The ansible_runner.run keywords of one run (no callbacks). Writes the extravars into
    `private_dir` as `env/extravars` (ansible-runner passes it as `-e @file`): the one way
    values reach a playbook, so none can skip the unsafe marking."""
    env_dir = Path(private_dir) / "env"
    env_dir.mkdir(mode=0o700, exist_ok=True)
    extravars_file = env_dir / "extravars"
    extravars_file.write_text(extravars_text(extravars), encoding="utf-8")
    extravars_file.chmod(0o600)
    return {
        "private_data_dir": private_dir,
        "project_dir": str(project_dir),
        "playbook": playbook,
        "inventory": inventory,
        "limit": ",".join(limit) if limit else None,
        "forks": forks_for(limit, inventory),
        "envvars": ansible_env(),
        "quiet": True,
        "ident": "run",
        "settings": {"pexpect_timeout": CANCEL_POLL_S, "suppress_ansible_output": True},
    }


class _UnsafeDumper(yaml.SafeDumper):
    """YAML for Ansible's loader in which nothing is trusted as a template: every mapping and
    list is `!unsafe` (Ansible constructs everything beneath an unsafe node untrusted), and
    so is every string. Strings YAML would read as another type when untagged ("8080", "on",
    "", "null", dates) stay plainly quoted instead: Ansible resolves an `!unsafe` scalar's type
    as if unquoted, and such strings hold no template markers anyway. Numbers, booleans and
    null stay native for the playbooks' logic. No anchors: each value is written out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_STR_TAG = "tag:yaml.org,2002:str"


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    value = str(value)
    implicit = dumper.resolve(yaml.ScalarNode, value, (True, False))
    tag = "!unsafe" if implicit == _STR_TAG else _STR_TAG
    # double-quoted: every character (newline, tab, unicode) round-trips exactly
    return dumper.represent_scalar(tag, value, style='"')


def _represent_mapping(dumper: yaml.SafeDumper, value: Mapping) -> yaml.MappingNode:
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise TypeError(f"extravars: mapping key {bad[0]!r} is not a string")
    node = dumper.represent_dict(dict(value))
    node.tag = "!unsafe"
    return node


def _represent_list(dumper: yaml.SafeDumper, value: list | tuple) -> yaml.SequenceNode:
    node = dumper.represent_list(list(value))
    node.tag = "!unsafe"
    return node


def _refuse(dumper: yaml.SafeDumper, value: Any) -> yaml.Node:
    raise TypeError(f"extravars: {type(value).__name__} value {value!r} cannot be passed to "
                    "a playbook; use str, int, float, bool, None, list or dict")


for _type, _represent in ((str, _represent_str), (dict, _represent_mapping),
                          (list, _represent_list), (tuple, _represent_list),
                          (bytes, _refuse)):
    _UnsafeDumper.add_representer(_type, _represent)
for _type, _represent in ((str, _represent_str), (Mapping, _represent_mapping),
                          (object, _refuse)):
    _UnsafeDumper.add_multi_representer(_type, _represent)


def extravars_text(extravars: Mapping[str, Any]) -> str:
    """The extravars file of a run: JSON-like data with every string marked `!unsafe`."""
    return yaml.dump(dict(extravars), Dumper=_UnsafeDumper, allow_unicode=True,
                     sort_keys=False, width=math.inf)


def ansible_env(repo_root: Path = REPO_ROOT) -> dict[str, str]:
    """Points ansible at the repo's collection (walle.pool: its modules and roles) and
    config and switches the speed settings on. The repo's ansible.cfg, when present, owns the
    ssh arguments."""
    env = {
        "ANSIBLE_COLLECTIONS_PATH": str(ensure_collection(repo_root)),
        # the walle_consul inventory plugin: the pool from Consul's catalog
        "ANSIBLE_INVENTORY_PLUGINS": str(repo_root / "plugins" / "inventory"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",  # no discovery round trip
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        # ansible-playbook of this interpreter's environment (a venv need not be on PATH)
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    config = repo_root / "ansible.cfg"
    if config.is_file():
        env["ANSIBLE_CONFIG"] = str(config)
    else:
        env["ANSIBLE_SSH_ARGS"] = SSH_ARGS
        env["ANSIBLE_HOST_KEY_CHECKING"] = "False"
    return env


def forks_for(limit: list[str] | None, inventory: str | dict) -> int:
    """One fork per host, so no host waits for another's slot."""
    if limit:
        count = len(limit)
    elif isinstance(inventory, dict):
        count = len(_inventory_hosts(inventory))
    else:
        count = MAX_FORKS
    return max(1, min(MAX_FORKS, count))


def _inventory_hosts(group: Mapping[str, Any]) -> set[str]:
    hosts: set[str] = set()
    for node in group.values():
        if isinstance(node, Mapping):
            hosts.update((node.get("hosts") or {}).keys())
            hosts.update(_inventory_hosts(node.get("children") or {}))
    return hosts


class _StopFlag:
    """ansible-runner's cancel_callback: polled every CANCEL_POLL_S seconds."""

    def __init__(self, cancel: threading.Event | None, timeout: float | None):
        self._cancel = cancel
        self._deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self.timed_out = False

    def __call__(self) -> bool:
        if self._cancel is not None and self._cancel.is_set():
            return True
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.timed_out = True
            return True
        return False


def _tail(runner: Any, limit: int = 4000) -> str:
    try:
        text = runner.stdout.read()
    except (OSError, AttributeError, ValueError):
        return ""
    return text[-limit:] if isinstance(text, str) else ""



# ----- ad-hoc commands (walle exec, walle logs, the demo's read-back) ---------------------------
@dataclass(frozen=True)
class CommandResult:
    host: str
    rc: int
    stdout: str = ""
    stderr: str = ""
    unreachable: bool = False


def run_command(inventory: str | dict, hosts: list[str] | str, argv: list[str], *,
                timeout: float = 120.0) -> dict[str, CommandResult]:
    """Run `argv` (no shell) on `hosts` (a host pattern such as "all", or a list), one fork
    per host; answers per host. The argv reaches the command module as its `argv` list
    through the unsafe extravars: no `creates=`/`chdir=` parsing, no templating."""
    pattern = hosts if isinstance(hosts, str) else ",".join(hosts)
    if not pattern or not argv:
        return {}
    results: dict[str, CommandResult] = {}

    def handle(event: Mapping[str, Any]) -> bool:
        data = event.get("event_data") or {}
        host = data.get("host")
        if host and data.get("task") == COMMAND_TASK:
            result = command_result(str(host), event.get("event", ""), data.get("res") or {})
            if result is not None:
                results[result.host] = result
        return False

    extravars = {"walle_hosts": pattern, "walle_argv": [str(a) for a in argv]}
    stop = _StopFlag(None, timeout)
    with tempfile.TemporaryDirectory(prefix="walle-command-") as private_dir:
        kwargs = runner_args(COMMAND_PLAYBOOK, inventory, extravars, None, private_dir)
        kwargs["forks"] = MAX_FORKS if isinstance(hosts, str) else forks_for(hosts, inventory)
        ansible_runner.run(**kwargs, event_handler=handle, cancel_callback=stop)
    return dict(sorted(results.items()))



def command_result(host: str, kind: str, res: Mapping[str, Any]) -> CommandResult | None:
    """One host's answer from one ansible-runner event (None: not a result event). Never
    raises on odd module results, and a failed or skipped task never reads as rc 0."""
    if kind == "runner_on_unreachable":
        return CommandResult(host, -1, "", _text(res.get("msg")) or "unreachable", True)
    if kind == "runner_on_skipped":
        reason = _text(res.get("skip_reason")) or "the task was skipped"
        return CommandResult(host, 1, "", f"skipped: {reason}")
    if kind not in ("runner_on_ok", "runner_on_failed"):
        return None
    rc = _rc(res.get("rc"))
    if kind == "runner_on_failed" and not rc:
        rc = 1  # failed before or without running the command (chdir, missing program)
    stderr = _text(res.get("stderr"))
    if rc and not stderr:  # the module's own error ("Error executing command."), with argv
        stderr = _text(res.get("msg")) or "failed"
        if res.get("cmd") and not res.get("stdout"):
            stderr += f" ({_command_line(res['cmd'])})"
    return CommandResult(host, rc, _text(res.get("stdout")), stderr)


def _command_line(cmd: Any) -> str:
    return shlex.join(map(str, cmd)) if isinstance(cmd, list) else _text(cmd)


def _rc(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return 0


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)
