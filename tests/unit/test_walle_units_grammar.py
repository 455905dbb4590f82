"""The unit renderer applies the node grammar the spec parser applies (issue 9 item 7): it
refuses what systemd cannot carry instead of writing a unit systemd rejects or misreads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_collections.walle.pool.plugins.module_utils import walle_units as wu

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


def service(**kw) -> str:
    base = dict(slice="walle-web-0.slice", argv=["/usr/bin/app"])
    return wu.render_service("walle-web-0", **{**base, **kw})


@pytest.mark.parametrize(("field", "call", "fragment"), [
    ("memory_max", lambda: wu.render_slice("walle.slice", memory_max=10 ** 30), "largest size"),
    ("memory_max", lambda: wu.render_slice("walle.slice", memory_max="8E"), "largest size"),
    ("memory_high", lambda: wu.render_slice("walle.slice", memory_high=10 ** 5000),
     "largest size"),
    ("stop_timeout", lambda: service(stop_timeout=10 ** 400), "from 0 to"),
    ("stop_timeout", lambda: service(stop_timeout=1e300), "from 0 to"),
    ("stop_signal", lambda: service(stop_signal="SIGSTOP"), "ends a process"),
    ("stop_signal", lambda: service(stop_signal="chld"), "ends a process"),
    ("stop_signal", lambda: service(stop_signal="SIGRTMIN+3"), "ends a process"),
    ("command", lambda: service(argv=['/opt/a"b/run']), "systemd refuses quotes"),
    ("command", lambda: service(argv=["/opt/a\\b/run"]), "systemd refuses quotes"),
    ("command", lambda: service(argv=["/opt/it's"]), "systemd refuses quotes"),
    ("command", lambda: service(argv=["/opt/a$b/run"]), "'$'"),
    ("command", lambda: service(argv=["/opt/../bin/app"]), "normalised"),
    ("pre_stop", lambda: service(pre_stop=["/opt/a$b/hook"]), "'$'"),
    ("working_dir", lambda: service(working_dir="/srv/a/../b"), "normalised"),
])
def test_what_the_node_grammar_refuses_is_refused_naming_the_field(field, call, fragment):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(field + ":")
    assert fragment in str(info.value)


@pytest.mark.parametrize(("value", "written"), [
    (1 << 30, "1073741824"), ("4G", "4G"), ("1.5G", "1.5G"), ("4GiB", "4294967296"),
    ("64 M", "67108864"), ((1 << 63) - 1, str((1 << 63) - 1)), ("50%", "50%"),
    ("infinity", "infinity"),
])
def test_sizes_of_the_spec_grammar_are_written_so_systemd_reads_them(value, written):
    assert wu.format_size("memory_max", value) == written


def test_signals_are_normalised_then_checked():
    text = service(stop_signal="int")
    assert [v for _s, k, v in wu.parse_unit(text) if k == "KillSignal"] == ["SIGINT"]


def test_a_program_path_with_spaces_braces_and_percent_is_one_literal_word():
    text = service(argv=["/opt/my app/{x}/50%/run", "a b"])
    (line,) = [v for _s, k, v in wu.parse_unit(text) if k == "ExecStart"]
    assert line.startswith('"/opt/my app/{x}/50%%/run" ')
    assert wu.split_exec_words(line) == ["/opt/my app/{x}/50%/run", "a b"]


@needs_systemd_analyze
def test_systemd_loads_a_program_with_the_characters_the_grammar_allows(tmp_path):
    program = tmp_path / "my app" / "{x}" / "50%" / "#;=@ü" / "run"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    unit = tmp_path / "walle-web-0.service"
    unit.write_text(service(argv=[str(program), 'a"b', "c\\d", "$X", "%n"],
                            pre_stop=[str(program)], working_dir=str(program.parent),
                            stop_signal="SIGKILL", stop_timeout=1.5))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.timeout(300)
def test_ansible_ships_the_grammar_with_the_modules(tmp_path):
    """A real module run (AnsiballZ, the node's own python3): walle_units finds walle_grammar
    in the collection's module_utils, and its refusal names the option."""
    import json
    import os
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, ANSIBLE_CONFIG=str(repo / "ansible.cfg"),
               ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path), ANSIBLE_REMOTE_TEMP=str(tmp_path))
    args = {"name": "walle-x-0", "slice": "walle-x-0.slice", "command": "/bin/true",
            "stop_signal": "SIGSTOP", "state": "present"}
    ansible = Path(sys.executable).parent / "ansible"
    proc = subprocess.run([str(ansible), "localhost", "-c", "local", "-i", "localhost,",
                           "-e", f"ansible_python_interpreter={shutil.which('python3')}",
                           "-m", "walle.pool.walle_workload", "-a", json.dumps(args), "--check"],
                          capture_output=True, text=True, timeout=240, env=env, check=False)
    status, _, body = proc.stdout.partition("localhost | FAILED! => ")
    assert body, proc.stdout + proc.stderr
    result = json.loads(body)
    assert result.get("option") == "stop_signal", result
    assert "ends a process" in result["msg"]
