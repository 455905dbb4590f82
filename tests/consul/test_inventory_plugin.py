"""The walle_consul inventory plugin (plugins/inventory) against a Consul API: Walle's pool is
whatever Consul's catalog says, read by `ansible-inventory` and by the runner's playbook runs.

Connections are local (`ansible_connection: local` in the inventory's group vars), so playbook
runs reach the "nodes" without SSH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.adapters.runner import ansible_env, run_command, run_playbook
from walle.service.cluster import load_snapshot

pytestmark = pytest.mark.consul

ANSIBLE_BIN = Path(sys.executable).parent


def register(consul_addr: str, node: str, address: str, meta: dict | None = None) -> None:
    body = {"Node": node, "Address": address, "NodeMeta": meta or {},
            "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status",
                      "Status": "passing"}}
    answer = requests.put(f"http://{consul_addr}/v1/catalog/register", json=body, timeout=5)
    assert answer.status_code == 200, answer.text


def deregister(consul_addr: str, node: str) -> None:
    requests.put(f"http://{consul_addr}/v1/catalog/deregister", json={"Node": node},
                 timeout=5).raise_for_status()


def walle_meta(**extra: str) -> dict:
    return {"walle_cpu": "2", "walle_memory": str(2**30), "walle_disk": str(2**33),
            "walle_gpus": "0", **extra}


def write_inventory(tmp_path: Path, consul_addr: str, **options: str) -> Path:
    """A walle_consul file plus the group vars that carry the connection settings."""
    inventory = tmp_path / "pool" / "walle_consul.yml"
    (inventory.parent / "group_vars").mkdir(parents=True)
    lines = ["plugin: walle_consul", f"url: {consul_addr}",
             *(f"{k}: {v}" for k, v in options.items())]
    inventory.write_text("\n".join(lines) + "\n")
    (inventory.parent / "group_vars" / "all.yml").write_text(
        f"ansible_connection: local\nansible_python_interpreter: {sys.executable}\n")
    return inventory


def ansible_inventory(inventory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ANSIBLE_BIN / "ansible-inventory"), "-i", str(inventory), *args],
                          env={**os.environ, **ansible_env()}, capture_output=True, text=True,
                          timeout=120, cwd=inventory.parent)


def graph(inventory: Path) -> dict[str, set[str]]:
    """`ansible-inventory --graph` -> {group: hosts directly in it}."""
    out = ansible_inventory(inventory, "--graph")
    assert out.returncode == 0, out.stderr
    groups: dict[str, set[str]] = {}
    current = ""
    for line in out.stdout.splitlines():
        name = line.strip(" |-")
        if name.startswith("@"):
            current = name[1:].rstrip(":")
            groups.setdefault(current, set())
        elif name:
            groups[current].add(name)
    return groups


@pytest.fixture
def pool(consul_addr, unique, tmp_path):
    """Three catalog nodes: one with Walle's meta, one without any, one with a bad value."""
    names = {"good": unique("inv-good"), "bare": unique("inv-bare"), "bad": unique("inv-bad")}
    register(consul_addr, names["good"], "127.0.0.1",
             walle_meta(walle_zone="eu-1", walle_rack="r2", walle_label_gpu="a100"))
    register(consul_addr, names["bare"], "127.0.0.2")
    register(consul_addr, names["bad"], "127.0.0.3", walle_meta(walle_cpu="lots"))
    yield names, write_inventory(tmp_path, consul_addr)
    for name in names.values():
        deregister(consul_addr, name)


def test_graph_groups_walle_nodes_by_zone_rack_and_label(pool):
    names, inventory = pool
    groups = graph(inventory)
    good = names["good"]
    assert good in groups["walle_nodes"]
    assert good in groups["walle_zone_eu_1"]
    assert good in groups["walle_rack_r2"]
    assert good in groups["walle_label_gpu_a100"]
    assert {names["bare"], names["bad"]} <= groups["walle_unschedulable"]
    assert not {names["bare"], names["bad"]} & groups["walle_nodes"]
    assert good not in groups["walle_unschedulable"]


def test_host_vars_from_meta_connection_from_group_vars_and_the_reason_not_schedulable(pool):
    names, inventory = pool
    out = ansible_inventory(inventory, "--list")
    assert out.returncode == 0, out.stderr
    # ansible-inventory marks what the plugin set as untrusted: {"__ansible_unsafe": value}
    hostvars = json.loads(out.stdout, object_hook=lambda d: d.get("__ansible_unsafe", d)
                          if set(d) == {"__ansible_unsafe"} else d)["_meta"]["hostvars"]
    good = hostvars[names["good"]]
    assert good["ansible_host"] == "127.0.0.1"
    assert good["ansible_connection"] == "local"  # from group_vars/all.yml beside the file
    assert (good["walle_zone"], good["walle_rack"]) == ("eu-1", "r2")
    assert good["walle_labels"] == {"gpu": "a100"}
    assert good["walle_schedulable"] is True
    assert "no walle_cpu" in hostvars[names["bare"]]["walle_unschedulable_reason"]
    assert "walle_cpu='lots' is not a number" in \
        hostvars[names["bad"]]["walle_unschedulable_reason"]


def test_values_from_consul_are_never_templated(consul_addr, unique, tmp_path):
    node = unique("inv-tpl")
    register(consul_addr, node, "127.0.0.1",
             walle_meta(walle_zone="{{ 6 * 7 }}", walle_label_x="{{ lookup('env', 'HOME') }}"))
    try:
        inventory = write_inventory(tmp_path, consul_addr)
        play = tmp_path / "show.yml"
        shown = tmp_path / "shown"
        play.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n"
                        "    - ansible.builtin.copy:\n"
                        "        content: '{{ walle_zone }}|{{ walle_labels.x }}'\n"
                        f"        dest: {shown}\n")
        out = subprocess.run([str(ANSIBLE_BIN / "ansible-playbook"), "-i", str(inventory),
                              "--limit", node, str(play)],
                             env={**os.environ, **ansible_env()}, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert shown.read_text() == "{{ 6 * 7 }}|{{ lookup('env', 'HOME') }}"
    finally:
        deregister(consul_addr, node)


def test_runs_reach_the_nodes_consul_lists_now_without_editing_a_file(consul_addr, unique,
                                                                     tmp_path):
    first, later = unique("inv-run"), unique("inv-late")
    register(consul_addr, first, "127.0.0.1", walle_meta())
    inventory = write_inventory(tmp_path, consul_addr)
    try:
        assert run_command(str(inventory), [first], ["echo", "hi"])[first].stdout == "hi"
        register(consul_addr, later, "127.0.0.1", walle_meta())  # a node joins
        answers = run_command(str(inventory), [first, later], ["echo", "hi"])
        assert {n: a.stdout for n, a in answers.items()} == {first: "hi", later: "hi"}
    finally:
        deregister(consul_addr, first)
        deregister(consul_addr, later)


def test_a_node_gone_from_the_catalog_fails_with_that_reason(consul_addr, unique, tmp_path):
    node, gone = unique("inv-here"), unique("inv-gone")
    register(consul_addr, node, "127.0.0.1", walle_meta())
    project = tmp_path / "project"
    project.mkdir()
    (project / "place.yml").write_text(
        "- hosts: \"{{ walle_batch.keys() | list }}\"\n  gather_facts: false\n  tasks:\n"
        "    - name: 'walle: host done'\n      ansible.builtin.debug: {msg: done}\n")
    inventory = write_inventory(tmp_path, consul_addr)
    try:
        result = run_playbook("place.yml", str(inventory), {"walle_batch": {node: [], gone: []}},
                              [node, gone], project_dir=project, timeout=120)
    finally:
        deregister(consul_addr, node)
    assert result.ok_hosts == [node]
    reason = result.hosts[gone].failed_tasks[-1].msg
    assert reason.startswith(f"{gone} is not in the inventory ({inventory})"), reason


def test_consul_unreachable_is_a_clear_error(tmp_path):
    inventory = write_inventory(tmp_path, "127.0.0.1:9", timeout="1")
    out = ansible_inventory(inventory, "--graph")
    assert "walle_consul: reading Consul's catalog at 127.0.0.1:9" in out.stderr, out.stderr


def test_a_missing_token_file_is_named(consul_addr, tmp_path):
    inventory = write_inventory(tmp_path, consul_addr, token_file=str(tmp_path / "nope"))
    out = ansible_inventory(inventory, "--graph")
    assert "CONSUL_HTTP_TOKEN_FILE" in out.stderr and "nope: cannot read it" in out.stderr, \
        out.stderr


def test_the_optional_cache_answers_without_consul_until_flushed(consul_addr, unique, tmp_path):
    node = unique("inv-cached")
    register(consul_addr, node, "127.0.0.1", walle_meta())
    inventory = write_inventory(tmp_path, consul_addr, cache="true",
                                cache_plugin="ansible.builtin.jsonfile",
                                cache_connection=str(tmp_path / "cache"))
    assert node in graph(inventory)["walle_nodes"]
    deregister(consul_addr, node)
    assert node in graph(inventory)["walle_nodes"]  # from the cache
    out = ansible_inventory(inventory, "--graph", "--flush-cache")
    assert out.returncode == 0 and node not in out.stdout, out.stdout + out.stderr


def test_what_the_plugin_lists_unschedulable_the_leader_never_places_on(pool, consul_addr):
    names, inventory = pool
    api = ConsulApi(ConsulConfig.from_env(addr=consul_addr))
    candidates = set(load_snapshot(api, StateStore(api)).nodes)
    groups = graph(inventory)
    assert names["good"] in candidates
    assert not groups["walle_unschedulable"] & candidates
