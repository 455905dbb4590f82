"""Untrusted values reach the nodes literally (issue 9, items 1 and 9).

Everything the runner hands to Ansible comes from a job, a node or Consul: none of it may be
evaluated as a template on the controller. The encoding is checked on its own (every string,
keys included, is `!unsafe`) and through real ansible-runner runs over local connections: the
values arrive byte for byte, the playbook logic (hosts:, loop, when) still works on them, and
a `lookup('pipe', ...)` in a value never runs. `walle exec` passes its argv as argv: no
`creates=`/`chdir=` option parsing, no templating, and a robust result handler.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from walle.adapters import runner
from walle.adapters.runner import CommandResult, command_result


def payloads(marker: Path) -> list[str]:
    """Strings Ansible would evaluate (or choke on) if it templated them."""
    return [
        "{{ 7*6 }}",
        "{% if true %}T{% endif %}",
        f"{{{{ lookup('pipe', 'touch {marker}') }}}}",
        f"{{% set x = lookup('pipe', 'touch {marker}') %}}",
        "{# comment #}",
        "{{ unclosed",
        "{% raw %}{{ 1 }}{% endraw %}",
        "quotes ' \" and \\ backslash",
        "  spaces  around  ",
        "%s $HOME ${X} `id` $(id)",
        "ünïcødé ✓",
        "multi\nline\ttab",
        "",
        "creates=/etc/passwd",
    ]


# ----- the encoding -----------------------------------------------------------------------------
LOOKALIKES = ["8080", "", "on", "no", "null", "~", "2001-01-01", "1e3", "0x1f", "-.inf"]


def sample(marker: Path) -> dict:
    return {"walle_batch": {"node{{ 1 }}": [{"args": [*payloads(marker), *LOOKALIKES],
                                             "slot": 0, "cpu": 0.25, "on": True, "off": None,
                                             "env": {"{% x %}": "{{ y }}", "PORT": "8080"},
                                             "tags": ("{{ t }}", "x")}]},
            "walle_register": False}


def strings_in(value, found=None) -> list:
    found = [] if found is None else found
    if isinstance(value, dict):
        for key, item in value.items():
            found.append(key)
            strings_in(item, found)
    elif isinstance(value, list):
        for item in value:
            strings_in(item, found)
    elif isinstance(value, str):
        found.append(value)
    return found


def test_ansible_loads_every_string_untrusted_and_with_its_type(tmp_path):
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import is_trusted_as_template

    data = sample(tmp_path / "m")
    encoded = tmp_path / "extravars"
    encoded.write_text(runner.extravars_text(data))
    # as ansible-playbook reads `-e @file` (utils/vars.py load_extra_vars)
    loaded = DataLoader().load_from_file(str(encoded), trusted_as_template=True)
    expected = json.loads(json.dumps(data))  # tuples arrive as lists
    assert json.loads(json.dumps(loaded)) == expected
    assert loaded["walle_batch"]["node{{ 1 }}"][0]["args"][-len(LOOKALIKES):] == LOOKALIKES
    strings = strings_in(loaded)
    assert len(strings) > 30
    assert [s for s in strings if is_trusted_as_template(s)] == []
    # what ansible-runner wrote before (JSON): every string trusted, so templated
    as_json = tmp_path / "extravars.json"
    as_json.write_text(json.dumps(data))
    old = DataLoader().load_from_file(str(as_json), trusted_as_template=True)
    assert is_trusted_as_template(old["walle_batch"]["node{{ 1 }}"][0]["args"][0])


@pytest.mark.parametrize("bad", [object(), {1: "int key"}, b"bytes"])
def test_values_json_could_not_carry_are_refused(bad):
    with pytest.raises(TypeError):
        runner.extravars_text({"x": bad})


# ----- real runs --------------------------------------------------------------------------------
PLAY = """
- name: Echo
  hosts: "{{ walle_batch.keys() | list }}"
  gather_facts: false
  strategy: free
  tasks:
    - name: Write what arrived, as the module saw it
      ansible.builtin.copy:
        content: "{{ walle_batch[inventory_hostname] | to_json }}"
        dest: "{{ walle_out }}/{{ inventory_hostname }}.json"
        mode: "0600"
      when: walle_enabled | bool

    - name: One file per service instance (loop, when and a path built from the values)
      ansible.builtin.copy:
        content: "{{ item.args | join('|') }}"
        dest: "{{ walle_out }}/{{ inventory_hostname }}-{{ item.id }}.txt"
        mode: "0600"
      loop: "{{ walle_batch[inventory_hostname] }}"
      loop_control: {label: "{{ item.id }}"}
      when: item.kind == 'service' and item.slot | int >= 0

    - name: Argv through the command module
      ansible.builtin.command:
        argv: "{{ ['printf', '[%s]\\n'] + walle_batch[inventory_hostname][0].args }}"
        expand_argument_vars: false
      register: walle_printed
      changed_when: false

    - name: Keep the printed text
      ansible.builtin.copy:
        content: "{{ walle_printed.stdout }}"
        dest: "{{ walle_out }}/{{ inventory_hostname }}-argv.txt"
        mode: "0600"

    - name: "Walle: host done"
      ansible.builtin.debug: {msg: done}
"""
HOSTS = ("a", "b")


def local_inventory() -> dict:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    return {"all": {"hosts": {h: dict(local) for h in HOSTS}}}


def test_playbook_values_arrive_literally_and_nothing_runs_on_the_controller(tmp_path):
    marker = tmp_path / "controller-ran-a-lookup"
    project, out = tmp_path / "project", tmp_path / "out"
    project.mkdir()
    out.mkdir()
    (project / "echo.yml").write_text(PLAY)
    args = [p for p in payloads(marker) if "\n" not in p and "\t" not in p]
    batch = {
        "a": [{"id": "{{ 7*6 }}x", "kind": "service", "slot": 0, "args": args,
               "env": {"K": "{{ lookup('pipe', 'id') }}", "{{ k }}": "v"}},
              {"id": "b0", "kind": "batch", "slot": 1, "args": ["x"]}],
        "b": [{"id": "plain", "kind": "service", "slot": 2, "args": payloads(marker)}],
    }
    result = runner.run_playbook("echo.yml", local_inventory(),
                                 {"walle_batch": batch, "walle_out": str(out),
                                  "walle_enabled": True},
                                 list(HOSTS), project_dir=project, timeout=120)
    assert result.ok_hosts == ["a", "b"], (result.hosts, result.output_tail)
    for host in HOSTS:
        assert json.loads((out / f"{host}.json").read_text()) == batch[host]
    assert (out / "a-{{ 7*6 }}x.txt").read_text() == "|".join(args)
    assert (out / "b-plain.txt").read_text() == "|".join(payloads(marker))
    assert not (out / "a-b0.txt").exists()  # `when` saw kind == 'batch'
    assert (out / "a-argv.txt").read_text() == "\n".join(f"[{a}]" for a in args)
    assert not marker.exists()


def test_exec_passes_argv_exactly(tmp_path):
    marker = tmp_path / "controller-ran-a-lookup"
    argv = ["printf", "[%s]\\n", "creates=/etc/passwd", "chdir=/nonexistent", "removes=/nope",
            "executable=/bin/false", "a b  c", "it's \"quoted\"", *payloads(marker)[:7]]
    results = runner.run_command(local_inventory(), "all", argv, timeout=120)
    assert sorted(results) == list(HOSTS)
    expected = "\n".join(f"[{a}]" for a in argv[2:])
    for host, res in results.items():
        assert res == CommandResult(host, 0, expected, ""), res
    assert not marker.exists()


def test_exec_reports_a_missing_program_and_a_failing_command(tmp_path):
    results = runner.run_command(local_inventory(), ["a"], ["/no/such/program", "x"],
                                 timeout=120)
    assert results["a"].rc != 0
    assert results["a"].stderr == "Error executing command. (/no/such/program x)"
    results = runner.run_command(local_inventory(), ["b"], ["sh", "-c", "echo out; exit 3"],
                                 timeout=120)
    assert results["b"].rc == 3 and results["b"].stdout == "out"


# ----- the ad-hoc result handler ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "res", "expected"),
    [
        ("runner_on_ok", {"rc": 0, "stdout": "hi", "stderr": ""}, (0, "hi", "")),
        ("runner_on_failed", {"rc": 2, "stdout": "", "stderr": "boom", "msg": "non-zero"},
         (2, "", "boom")),
        # a module failure before the command ran (chdir, missing program): rc is None
        ("runner_on_failed", {"rc": None, "msg": "Unable to change directory"},
         (1, "", "Unable to change directory")),
        ("runner_on_failed", {"msg": "no rc at all"}, (1, "", "no rc at all")),
        ("runner_on_failed", {"rc": 0, "msg": "failed_when"}, (1, "", "failed_when")),
        ("runner_on_failed", {"rc": "7", "stderr": "x"}, (7, "", "x")),
        ("runner_on_ok", {"rc": "garbage", "stdout": None, "stderr": None}, (0, "", "")),
        ("runner_on_failed", {"rc": True, "msg": {"nested": ["dict"]}},
         (1, "", '{"nested": ["dict"]}')),
        ("runner_on_skipped", {"skip_reason": "Conditional result was False"},
         (1, "", "skipped: Conditional result was False")),
    ],
)
def test_command_result_never_raises_and_never_reports_a_failure_as_success(kind, res,
                                                                           expected):
    got = command_result("h", kind, res)
    assert (got.rc, got.stdout, got.stderr) == expected
    assert not got.unreachable


def test_command_result_unreachable_and_other_events():
    got = command_result("h", "runner_on_unreachable", {"msg": "ssh: no route"})
    assert got == CommandResult("h", -1, "", "ssh: no route", True)
    assert command_result("h", "runner_on_unreachable", {}).stderr == "unreachable"
    assert command_result("h", "playbook_on_start", {}) is None
    assert command_result("h", "runner_on_start", {"rc": None}) is None
