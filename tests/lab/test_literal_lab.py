"""Untrusted values reach the node literally, through the real executor path (issue 9, 1 and 9).

A job whose every free-text field carries Jinja (`{{ }}`, `{% %}`, `{# #}`, a
`lookup('pipe', 'touch <marker>')`), quotes, backslashes, `$` and `%` is placed with
place.yml on a real node and stopped with stop.yml: the workload sees its command, argv,
environment and working directory byte for byte, the Consul registration carries the tags,
check URL and address byte for byte, the pre-stop hook gets its argument byte for byte, and
the marker file exists nowhere (the lookup never ran on the controller or the node).

Fields not covered here are held to a grammar by walle.jobspec.parse before they get this far and
cannot carry such text: the job and service names (DNS labels; they name units and Consul
services), runtime.user, stop.signal, schedule (OnCalendar), runtime.image (nspawn only).
constraints and data never leave the scheduler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from walle.adapters.runner import REPO_ROOT, run_command, run_playbook
from walle.core.model import Grant
from walle.jobspec.model import (
    Discovery,
    HealthCheck,
    JobSpec,
    Range,
    Resources,
    Runtime,
    StopPolicy,
)
from walle.lab.consul_standin.server import start_in_thread
from walle.service.params import instance_vars, stop_vars

pytestmark = [pytest.mark.lab, pytest.mark.consul]
MIB = 1024**2
GRANT = Grant(cpu_weight=25, cpu_quota_percent=50, memory_min=16 * MIB,
              memory_high=96 * MIB, memory_max=128 * MIB)
# A controller path: the lookup, if ever evaluated, creates it here (nodes have their own /tmp)
MARKER = f"/tmp/walle-literal-{os.getpid()}-{uuid.uuid4().hex[:8]}"
JINJA = (f"{{{{ 7*6 }}}} {{% if true %}}T{{% endif %}} {{{{ lookup('pipe', 'touch {MARKER}') }}}}"
         " {# note #} {{ unclosed")
# systemd refuses quotes in an executable's path: the command gets Jinja without them
JINJA_UNQUOTED = "{{ 7*6 }} {% if true %}T{% endif %} {# note #} {{ x | default(42) }} {{ unclosed"
# in a URL (check path, address): no whitespace (`touch/tmp/...`: still a template)
JINJA_URL = f"{{{{7*6}}}}/{{%if(true)%}}T{{%endif%}}/{{{{lookup('pipe','touch{MARKER}')}}}}"
ODD = "it's \"quoted\" \\ back $HOME ${X} %h %% `id` $(id)"
OUT = "/var/tmp/literal-out.json"
PRESTOP_OUT = "/var/tmp/literal-prestop"
# The workload: writes what systemd gave it (argv, its LIT_ environment, cwd), then serves.
WORKLOAD = f"""#!/usr/bin/python3
import json, os, sys, time
seen = {{"argv": sys.argv, "cwd": os.getcwd(),
         "env": {{k: v for k, v in os.environ.items() if k.startswith("LIT_")}}}}
with open("{OUT}.tmp", "w") as f:
    json.dump(seen, f)
os.replace("{OUT}.tmp", "{OUT}")
time.sleep(100000)
"""


def hostile_spec() -> JobSpec:
    return JobSpec(
        name="lit",
        kind="service",
        count=1,
        resources=Resources(cpu=Range(0.1, 0.5), memory=Range(16 * MIB, 128 * MIB)),
        runtime=Runtime(
            kind="exec",
            command=f"/var/tmp/lit cmd {JINJA_UNQUOTED}/run.py",
            args=(JINJA, ODD, "creates=/etc/passwd", "chdir=/nonexistent", "{{", "%}",
                  "{% raw %}x{% endraw %}"),
            env=(("LIT_A", JINJA), ("LIT_B", ODD), ("LIT_C", "{{ lookup('pipe', 'id') }}")),
            working_dir=f"/var/tmp/lit wd {JINJA}",
            # not sandboxed: the probe program lives in and writes to the node's /var/tmp,
            # which a sandboxed unit sees as its own private, empty one
            privileged=True,
        ),
        health=HealthCheck(type="http", path=f"/health/{JINJA_URL}", interval=5.0),
        service=Discovery(name="lit", port=8080, tags=(JINJA, ODD, "{% raw %}t")),
        stop=StopPolicy(timeout=5.0, pre_stop=(
            "/bin/sh", "-c", f'printf %s "$1" > {PRESTOP_OUT}', "sh", JINJA + " " + ODD)),
        restart="always",
    )


@pytest.fixture
def standin(lab):
    server = start_in_thread(http=(lab.host_address, 0), dns=None,
                             agents={n.name: (lab.host_address, 0) for n in lab.nodes})
    try:
        yield server
    finally:
        server.stop()


def agent_get(standin, node: str, path: str):
    host, port = standin.agent_addrs[node]
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
        return json.load(resp)


def on_root(node, path: str) -> Path:
    return Path(node.root) / path.lstrip("/")


def wait_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return path.read_text() if path.exists() else ""


def test_every_spec_string_reaches_the_node_byte_for_byte(lab, standin):
    node = lab.nodes[0]
    spec = hostile_spec()
    rt = spec.runtime
    script = on_root(node, rt.command)
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(WORKLOAD)
    script.chmod(0o755)
    on_root(node, rt.working_dir).mkdir(parents=True, exist_ok=True)
    for stale in (OUT, PRESTOP_OUT):
        on_root(node, stale).unlink(missing_ok=True)
    host, port = standin.agent_addrs[node.name]
    agent = f"http://{host}:{port}"
    address = f"{node.address}{{{{7*6}}}}"  # a node address from Consul, never templated
    inventory = str(lab.inventory_path)
    batch = {node.name: [instance_vars(spec, 0, address, GRANT, agent)]}
    try:
        result = run_playbook("place.yml", inventory, {"walle_batch": batch},
                              [node.name], timeout=180)
        assert result.ok_hosts == [node.name], (result.hosts, result.output_tail)
        assert result.hosts[node.name].failed_instances == {}, result.hosts

        seen = json.loads(wait_file(on_root(node, OUT)) or "{}")
        assert seen.get("argv") == [rt.command, *rt.args]
        assert seen["env"] == dict(rt.env)
        assert seen["cwd"] == rt.working_dir

        service = agent_get(standin, node.name, "/v1/agent/services")["lit-0"]
        assert service["Tags"] == list(spec.service.tags)
        assert service["Address"] == address
        checks = json.dumps(agent_get(standin, node.name, "/v1/agent/checks"))
        assert json.dumps(f"http://{address}:8080{spec.health.path}") in checks
    finally:
        stopped = run_playbook("stop.yml", inventory,
                               {"walle_batch": {node.name: [stop_vars("lit", 0, agent)]}},
                               [node.name], timeout=180)
    assert stopped.ok_hosts == [node.name], (stopped.hosts, stopped.output_tail)
    assert on_root(node, PRESTOP_OUT).read_text() == spec.stop.pre_stop[-1]
    assert not os.path.exists(MARKER)
    assert not any(on_root(n, MARKER).exists() for n in lab.nodes)


def test_exec_argv_comes_back_verbatim(lab, tmp_path):
    marker = tmp_path / "ran"
    args = ["creates=/etc/passwd", "chdir=/nonexistent", "removes=/etc/passwd",
            f"{{{{ lookup('pipe', 'touch {marker}') }}}}", "{% if true %}T{% endif %}",
            "it's \"quoted\"", "two  spaces ", "$HOME"]
    node = lab.nodes[0].name
    results = run_command(str(lab.inventory_path), [node], ["printf", "[%s]\\n", *args],
                          timeout=120)
    assert results[node].rc == 0, results
    assert results[node].stdout == "\n".join(f"[{a}]" for a in args)

    # a host pattern (walle exec's default) reaches every node
    everywhere = run_command(str(lab.inventory_path), "walle_nodes", ["printf", "%s", "{{ x }}"],
                             timeout=120)
    assert {h: (r.rc, r.stdout) for h, r in everywhere.items()} == {
        n.name: (0, "{{ x }}") for n in lab.nodes}

    # the same through the CLI, as an operator types it
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "scheduler")}
    out = subprocess.run(
        [sys.executable, "-m", "walle.cli.main", "exec", "--inventory", str(lab.inventory_path),
         "--nodes", node, "--json", "--", "echo", "creates=/etc/passwd", "chdir=/x"],
        capture_output=True, text=True, env=env, timeout=180, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    answer = json.loads(out.stdout)[node]
    assert (answer["rc"], answer["stdout"]) == (0, "creates=/etc/passwd chdir=/x")
    assert not marker.exists()
