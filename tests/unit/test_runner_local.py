"""The runner adapter against real ansible-runner runs on local connections (no ssh, no root).

The playbook mirrors place.yml's shape (include per instance, block/rescue, host done task)
with the walle modules swapped for `ansible.builtin.command`, so the adapter's event handling,
host isolation, cancellation and timeout are exercised end to end.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from walle.adapters import runner

PLAY = """
- name: Place
  hosts: "{{ walle_batch.keys() | list }}"
  gather_facts: false
  strategy: free
  tasks:
    - name: Place one instance
      ansible.builtin.include_tasks: one.yml
      loop: "{{ walle_batch[inventory_hostname] }}"
      loop_control: {loop_var: walle_instance, label: "{{ walle_instance.id }}"}
    - name: Host-wide step
      ansible.builtin.command: "{{ walle_host_cmd[inventory_hostname] | default('true') }}"
    - name: "Walle: host done"
      ansible.builtin.debug: {msg: done}
"""
ONE = """
- name: Instance
  block:
    - name: Start
      ansible.builtin.command: "{{ walle_instance.cmd }}"
  rescue:
    - name: "Walle: instance failed"
      ansible.builtin.debug:
        msg: {id: "{{ walle_instance.id }}", error: "{{ ansible_failed_result.rc }}"}
"""
HOSTS = ("a", "b", "c")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "place.yml").write_text(PLAY)
    (tmp_path / "one.yml").write_text(ONE)
    return tmp_path


def inventory() -> dict:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    return {"all": {"hosts": {h: dict(local) for h in HOSTS}}}


def batch(**cmds: list[str]) -> dict:
    return {h: [{"id": f"{h}-{i}", "cmd": c} for i, c in enumerate(cmds.get(h, ["true"]))]
            for h in HOSTS}


def test_failures_stay_with_their_host_and_instance(project):
    done: list[str] = []
    extravars = {"walle_batch": batch(b=["true", "false"]), "walle_host_cmd": {"c": "false"}}
    result = runner.run_playbook("place.yml", inventory(), extravars, list(HOSTS),
                                 on_host_done=lambda h, r: done.append(h),
                                 project_dir=project, timeout=120)
    assert sorted(done) == list(HOSTS)
    assert result.ok_hosts == ["a", "b"]
    assert result.failed_hosts == ["c"]
    assert result.hosts["b"].failed_instances == {"b-1": "1"}
    assert result.hosts["a"].failed_instances == {}
    assert result.hosts["c"].failed_tasks[0].task == "Host-wide step"
    assert result.status == "failed" and result.rc != 0
    assert result.hosts["a"].changed  # command tasks report changed


def test_limit_keeps_the_run_to_the_hosts_named(project):
    result = runner.run_playbook("place.yml", inventory(), {"walle_batch": batch()}, ["a"],
                                 project_dir=project, timeout=120)
    assert list(result.hosts) == ["a"]
    assert result.status == "successful" and result.ok_hosts == ["a"]


def test_a_host_missing_from_the_inventory_is_reported_failed(project):
    result = runner.run_playbook("place.yml", inventory(), {"walle_batch": batch()},
                                 ["a", "ghost"], project_dir=project, timeout=120)
    assert result.ok_hosts == ["a"]
    assert result.hosts["ghost"].failed and not result.hosts["ghost"].ok
    # the reason names the cause (issue 11: a node known to Consul, missing from the file,
    # used to fail with "run ended ... before this host finished")
    reason = result.hosts["ghost"].failed_tasks[-1].msg
    assert "ghost is not in the inventory" in reason, reason
    assert "before this host finished" not in reason


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_cancel_and_timeout_stop_the_run_quickly(project, how):
    cancel = threading.Event()
    extravars = {"walle_batch": batch(), "walle_host_cmd": {h: "sleep 30" for h in HOSTS}}
    if how == "cancel":
        threading.Timer(1.5, cancel.set).start()
    started = time.monotonic()
    result = runner.run_playbook("place.yml", inventory(), extravars, list(HOSTS),
                                 project_dir=project, cancel=cancel,
                                 timeout=1.5 if how == "timeout" else 60)
    elapsed = time.monotonic() - started
    assert elapsed < 15
    assert result.status == ("canceled" if how == "cancel" else "timeout")
    assert result.failed_hosts == list(HOSTS)
    assert all("before this host finished" in r.failed_tasks[-1].msg
               for r in result.hosts.values())


@pytest.mark.parametrize("playbook", ["place.yml", "stop.yml", "grants.yml", "migrate.yml",
                                      "command.yml"])
def test_walle_playbooks_parse(playbook):
    path = runner.PLAYBOOK_DIR / playbook
    env = {**runner.ansible_env(), "PATH": "/usr/bin:/bin",
           "ANSIBLE_LOCAL_TEMP": "/tmp/walle-ansible-tmp"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check", "-i",
         "localhost,", "-e",
         '{"walle_batch": {}, "walle_place": {}, "walle_stop": {}, "walle_hosts": "all"}',
         str(path)],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
