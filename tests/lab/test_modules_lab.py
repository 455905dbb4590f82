"""walle_slice / walle_workload / walle_facts against real systemd in a lab node.

Each module call is an ansible-runner ad-hoc run against node1 of the session's lab (ssh into
an nspawn container booted with systemd). Unit names carry this process's id, and every test
removes what it wrote, so the tests can share the lab with others.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from pathlib import Path

import ansible_runner
import pytest

from walle.collection import ensure_collection

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
TAG = f"lt{os.getpid()}"
SLICE = f"walle-{TAG}-0.slice"
STEM = f"walle-{TAG}-0"
ENV = {
    "ANSIBLE_COLLECTIONS_PATH": str(ensure_collection(REPO)),
    "ANSIBLE_HOST_KEY_CHECKING": "False",
    "ANSIBLE_PIPELINING": "True",
}


class LabNodeClient:
    """Runs one module on one lab node and returns its result dict."""

    def __init__(self, lab, host: str = "node1"):
        self.inventory = str(lab.inventory_path)
        self.host = host

    def module(self, name: str, args: dict, check: bool = False, diff: bool = True) -> dict:
        cmdline = " ".join(x for x in ("--check" if check else "", "--diff" if diff else "") if x)
        with tempfile.TemporaryDirectory(prefix="walle-lab-mod-") as private:
            os.environ["PATH"] = f"{VENV_BIN}:{os.environ.get('PATH', '')}"
            runner = ansible_runner.run(
                private_data_dir=private, host_pattern=self.host, inventory=self.inventory,
                module=name if "." in name else f"walle.pool.{name}",  # walle_*: ours
                module_args=json.dumps(args), cmdline=cmdline, envvars=ENV,
                quiet=True, timeout=120)
            # The event says how it ended (its `res` has no "failed" key).
            results = [{**e["event_data"]["res"], "_outcome": e["event"].rsplit("_", 1)[1]}
                       for e in runner.events
                       if e["event"] in ("runner_on_ok", "runner_on_failed",
                                         "runner_on_unreachable")]
        assert len(results) == 1, f"{name}: rc={runner.rc} status={runner.status}"
        return results[0]

    def ok(self, name: str, args: dict, **kw) -> dict:
        result = self.module(name, args, **kw)
        assert result["_outcome"] == "ok", result
        return result

    def sh(self, command: str) -> str:
        return self.ok("ansible.builtin.command", {"argv": ["/bin/sh", "-c", command]},
                       diff=False)["stdout"]

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {shlex.quote(unit)} --property={','.join(props)}")
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def node(lab):
    client = LabNodeClient(lab)
    yield client
    client.module("walle_workload", {"name": STEM, "state": "absent"})
    client.module("walle_slice", {"name": SLICE, "state": "absent"})


SLICE_ARGS = dict(name=SLICE, cpu_weight=100, memory_max="256M", tasks_max=64,
                  device_policy="closed", device_allow=["/dev/null rw"])


def test_slice_create_rerun_check_and_read_back(node):
    created = node.ok("walle_slice", SLICE_ARGS)
    assert created["changed"] and created["diff"]["before"] == ""
    assert node.ok("walle_slice", SLICE_ARGS)["changed"] is False

    checked = node.ok("walle_slice", {**SLICE_ARGS, "memory_max": "512M"}, check=True)
    assert checked["changed"] and "MemoryMax=512M" in checked["diff"]["after"]
    assert "MemoryMax=256M" in node.sh(f"cat /etc/systemd/system/{SLICE}")

    props = node.show(SLICE, "MemoryMax", "CPUWeight", "TasksMax", "DevicePolicy", "LoadState")
    assert props == {"MemoryMax": str(256 << 20), "CPUWeight": "100", "TasksMax": "64",
                     "DevicePolicy": "closed", "LoadState": "loaded"}


def test_workload_runs_arguments_and_env_literally(node):
    node.ok("walle_slice", SLICE_ARGS)
    nasty = ['$HOME %n "q" \\', "two words", ";", "it's 100%"]
    # The sandbox leaves the workload its RuntimeDirectory (/run/<stem>) writable.
    script = ("import json, os, sys, time; "
              "open(os.environ['RUNTIME_DIRECTORY'] + '/args', 'w').write(json.dumps(["
              "sys.argv[1:], os.environ['MSG']])); time.sleep(600)")
    args = dict(name=STEM, slice=SLICE, command="/usr/bin/python3", args=["-c", script, *nasty],
                env={"MSG": 'x $USER %h "y"'}, restart="always",
                pre_stop=["/bin/sh", "-c", 'echo drained > "$STATE_DIRECTORY/prestop"'],
                stop_timeout=10)
    started = node.ok("walle_workload", args)
    assert started["changed"] and started["active_state"] == "active", started
    assert started["main_pid"] > 0 and not started["restarted"]
    seen = node.sh(f"for i in $(seq 50); do [ -s /run/{STEM}/args ] && break; sleep 0.1; "
                   f"done; cat /run/{STEM}/args")
    assert json.loads(seen) == [nasty, 'x $USER %h "y"']
    assert node.show(f"{STEM}.service", "Slice")["Slice"] == SLICE

    again = node.ok("walle_workload", args)
    assert again["changed"] is False and again["main_pid"] == started["main_pid"]


def test_a_program_path_the_grammar_allows_runs_with_its_exact_argv(node):
    """Spaces, braces, `%`, `#`, `;` and non-ASCII in the program path (walle_grammar allows
    them; quotes, backslash and `$` it refuses): systemd runs that very file, argv[0] intact."""
    program = f"/opt/{TAG} a/{{b}}/50%/#;é/run"
    node.sh(f"mkdir -p {shlex.quote(program.rsplit('/', 1)[0])} && "
            f"printf '#!/bin/sh\\nprintf \"%%s\\\\n\" \"$0\" \"$@\" > /run/{TAG}.prog\\n' "
            f"> {shlex.quote(program)} && chmod 755 {shlex.quote(program)}")
    node.ok("walle_slice", SLICE_ARGS)
    # privileged: the probe program writes its argv to the node's /run, outside a sandbox
    args = dict(name=f"{STEM}p", slice=SLICE, kind="batch", command=program,
                args=["%n", "$HOME", "a b"], restart="no", privileged=True)
    try:
        node.ok("walle_workload", args)
        seen = node.sh(f"for i in $(seq 50); do [ -s /run/{TAG}.prog ] && break; sleep 0.1; "
                       f"done; cat /run/{TAG}.prog")
        assert seen.splitlines() == [program, "%n", "$HOME", "a b"]
    finally:
        node.module("walle_workload", {"name": f"{STEM}p", "state": "absent"})


def test_set_property_changes_cpu_weight_without_restarting(node):
    pid_before = node.show(f"{STEM}.service", "MainPID")["MainPID"]
    assert int(pid_before) > 0
    changed = node.ok("walle_slice", {**SLICE_ARGS, "cpu_weight": 300})
    assert changed["changed"] and changed["applied_live"] == ["CPUWeight"]
    assert node.show(SLICE, "CPUWeight")["CPUWeight"] == "300"
    assert "CPUWeight=300" in node.sh(f"cat /etc/systemd/system/{SLICE}")
    assert node.show(f"{STEM}.service", "MainPID")["MainPID"] == pid_before

    # A list grows (reset, then every entry) and a directive goes (reset to its default).
    fewer = {k: v for k, v in SLICE_ARGS.items() if k != "tasks_max"}
    changed = node.ok("walle_slice", {**fewer, "cpu_weight": 300,
                                      "device_allow": ["/dev/null rw", "/dev/zero r"]})
    assert changed["applied_live"] == ["DeviceAllow", "TasksMax"]
    allowed = node.sh(f"systemctl show {SLICE} --property=DeviceAllow")
    assert "/dev/null rw" in allowed and "/dev/zero r" in allowed
    assert node.show(SLICE, "TasksMax")["TasksMax"] != "64"
    assert node.show(f"{STEM}.service", "MainPID")["MainPID"] == pid_before


def test_changed_unit_text_restarts_and_stop_runs_the_pre_stop_hook(node):
    pid_before = int(node.show(f"{STEM}.service", "MainPID")["MainPID"])
    # The hook runs in the service's sandbox: its StateDirectory (/var/lib/<stem>) outlives it.
    args = dict(name=STEM, slice=SLICE, command="/bin/sleep", args=["600"],
                pre_stop=["/bin/sh", "-c", 'echo drained > "$STATE_DIRECTORY/prestop"'],
                stop_timeout=10)
    replaced = node.ok("walle_workload", args)
    assert replaced["changed"] and replaced["restarted"]
    assert replaced["main_pid"] not in (0, pid_before)
    node.sh(f"rm -f /var/lib/{STEM}/prestop")

    stopped = node.ok("walle_workload", {**args, "state": "stopped"})
    assert stopped["changed"] and stopped["active_state"] in ("inactive", "failed")
    assert node.sh(f"cat /var/lib/{STEM}/prestop") == "drained"
    assert node.ok("walle_workload", {**args, "state": "stopped"})["changed"] is False


SECRET = f"lab-secret-{os.getpid()}-value"


def test_sandboxed_workload_reads_its_secret_from_credentials_only(node):
    """The default sandbox holds in a lab node (systemd in nspawn) and a credential reaches
    the workload through $CREDENTIALS_DIRECTORY, never through a unit file or systemctl."""
    script = ("import os, time, pathlib; "
              "v = pathlib.Path(os.environ['CREDENTIALS_DIRECTORY'], 'db').read_text(); "
              "pathlib.Path(os.environ['STATE_DIRECTORY'], 'seen').write_text(v); "
              "pathlib.Path(os.environ['STATE_DIRECTORY'], 'uid').write_text(str(os.getuid())); "
              "time.sleep(600)")
    args = dict(name=STEM, slice=SLICE, command="/usr/bin/python3", args=["-c", script],
                credentials={"db": SECRET}, stop_timeout=5)
    started = node.module("walle_workload", args)
    assert started["_outcome"] == "ok", started
    assert SECRET not in json.dumps(started)
    seen = node.sh(f"for i in $(seq 50); do [ -s /var/lib/{STEM}/uid ] && break; sleep 0.1; "
                   f"done; cat /var/lib/{STEM}/seen; echo; cat /var/lib/{STEM}/uid")
    value, uid = seen.split("\n")
    assert value == SECRET and int(uid) != 0  # DynamicUser: not root
    unit = f"/etc/systemd/system/{STEM}.service"
    assert node.sh(f"stat -c %a {unit}") == "640"
    assert node.sh(f"stat -c %a /run/walle/credentials/{STEM}/db") == "600"
    leaks = node.sh(f"grep -rl {shlex.quote(SECRET)} /etc/systemd /run/systemd || true; "
                    f"systemctl show {STEM}.service | grep -c {shlex.quote(SECRET)} || true")
    assert leaks == "0", leaks
    node.ok("walle_workload", {"name": STEM, "state": "absent"})
    assert node.sh(f"test -e /run/walle/credentials/{STEM} && echo left || echo gone") == "gone"


def test_cron_timer_and_absent(node):
    args = dict(name=STEM, slice=SLICE, kind="cron", schedule="*-*-* 03:00:00",
                command="/bin/true")
    node.ok("walle_workload", {"name": STEM, "state": "absent"})
    created = node.ok("walle_workload", args)
    assert created["units"] == [f"{STEM}.service", f"{STEM}.timer"]
    assert node.show(f"{STEM}.timer", "ActiveState")["ActiveState"] == "active"

    checked = node.ok("walle_workload", {"name": STEM, "state": "absent"}, check=True)
    assert checked["changed"]
    assert node.show(f"{STEM}.timer", "ActiveState")["ActiveState"] == "active"

    removed = node.ok("walle_workload", {"name": STEM, "state": "absent"})
    assert removed["changed"] and removed["diff"]
    assert node.show(f"{STEM}.timer", "LoadState")["LoadState"] == "not-found"
    assert node.ok("walle_workload", {"name": STEM, "state": "absent"})["changed"] is False


def test_bad_value_fails_naming_the_option_and_writes_nothing(node):
    result = node.module("walle_workload", dict(name=STEM, slice=SLICE, command="/bin/true",
                                                args=["a\nExecStartPre=/bin/false"]))
    assert result["_outcome"] == "failed" and result["option"] == "args"
    assert node.show(f"{STEM}.service", "LoadState")["LoadState"] == "not-found"


def test_slice_absent(node):
    removed = node.ok("walle_slice", {"name": SLICE, "state": "absent"})
    assert removed["changed"] and removed["diff"]["after"] == ""
    assert node.sh(f"test -e /etc/systemd/system/{SLICE} && echo yes || echo no") == "no"
    assert node.ok("walle_slice", {"name": SLICE, "state": "absent"})["changed"] is False


def test_facts_on_a_node(node):
    facts = node.ok("walle_facts", {"zone": "z1", "labels": {"ssd": "true"}})
    walle_node = facts["ansible_facts"]["walle_node"]
    assert facts["changed"] is False
    assert walle_node["cpu"] >= 1 and walle_node["memory"] > 0 and walle_node["disk"] > 0
    assert walle_node["zone"] == "z1"
    # the labels asked for, and what the node can run as measured facts (walle_node's
    # runtime_labels): a lab node's hybrid cgroup tree has no v2 controllers, so no runtime
    assert walle_node["labels"] == {"ssd": "true", "runtime_lxc": "false",
                                    "runtime_nspawn": "false"}
    assert walle_node["gpus"] == []
