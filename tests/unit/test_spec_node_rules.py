"""The validator accepts only what the node accepts (issue 9 item 7).

Hostile or careless input gets a SpecError naming the field, never a traceback; and what the
parser accepts, the unit renderer renders and `systemd-analyze verify` loads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_spec_rejects import DELETE, changed, problems_of

from walle.jobspec import SpecError, load_spec_text, parse_spec
from walle.jobspec.grammar import grammar

TEN_TO_30 = 10 ** 30


def root_problem(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec_text(text)
    ((path, message),) = [(p.path, p.message) for p in caught.value.problems]
    assert path == "<root>"
    return message


# (changes to BASE, field, a key part of the message)
REFUSED = [
    # huge numbers: a problem, not OverflowError
    ({"resources.cpu": int("9" * 400)}, "resources.cpu", "expected cores"),
    ({"resources.cpu": "9" * 400}, "resources.cpu", "at most 32"),
    ({"resources.cpu": {"min": 1, "max": int("9" * 400)}}, "resources.cpu.max",
     "expected cores"),
    ({"stop.timeout": int("9" * 400)}, "stop.timeout", "longest duration"),
    ({"stop.timeout": "9" * 400 + "s"}, "stop.timeout", "at most 32"),
    ({"update": {"health_timeout": int("9" * 400)}}, "update.health_timeout",
     "longest duration"),
    ({"count": 10 ** 5000 - 1}, "count", "whole number from 0 to 1000"),
    ({"runtime.args": [10 ** 5000 - 1]}, "runtime.args[0]", "expected a string"),
    ({"runtime.env.GREETING": 10 ** 5000 - 1}, "runtime.env.GREETING", "expected a string"),
    # sizes have the node's maximum (memory.max is an int64)
    ({"resources.memory": TEN_TO_30}, "resources.memory", "largest size a node accepts"),
    ({"resources.memory": "1000000000000T"}, "resources.memory", "largest size"),
    ({"resources.memory": "8E"}, "resources.memory", "largest size"),
    ({"resources.disk": TEN_TO_30}, "resources.disk", "largest size"),
    ({"resources.disk": float(TEN_TO_30)}, "resources.disk", "largest size"),
    ({"resources.cpu": 1025}, "resources.cpu", "from 0 to 1024"),
    # stop signals must end the process
    ({"stop.signal": "SIGSTOP"}, "stop.signal", "ends a process"),
    ({"stop.signal": "SIGCHLD"}, "stop.signal", "ends a process"),
    ({"stop.signal": "SIGCONT"}, "stop.signal", "ends a process"),
    ({"stop.signal": "SIGWINCH"}, "stop.signal", "ends a process"),
    ({"stop.signal": "SIGTSTP"}, "stop.signal", "ends a process"),
    # program paths systemd refuses ("Executable name contains special characters")
    ({"runtime.command": "/opt/a\\b"}, "runtime.command", "systemd refuses quotes"),
    ({"runtime.command": '/opt/a"b'}, "runtime.command", "systemd refuses quotes"),
    ({"runtime.command": "/opt/it's"}, "runtime.command", "systemd refuses quotes"),
    ({"runtime.command": "/opt/a$b"}, "runtime.command", "'$'"),
    ({"stop.pre_stop[0]": "/opt/a\\b"}, "stop.pre_stop[0]", "systemd refuses quotes"),
    # raw paths: systemd strips surrounding whitespace and joins a trailing backslash
    ({"runtime.working_dir": "/srv/app "}, "runtime.working_dir", "whitespace"),
    ({"runtime.working_dir": "/srv/app\\"}, "runtime.working_dir", "backslash"),
    ({"runtime.command": "/usr/bin/app "}, "runtime.command", "whitespace"),
    # cron: the timer renderer refuses edge whitespace, walle_workload a cron pre_stop
    ({"kind": "cron", "schedule": " daily", "stop.pre_stop": DELETE}, "schedule", "whitespace"),
    ({"kind": "cron", "schedule": "daily", "stop.pre_stop": DELETE}, None, None),
    ({"kind": "cron", "schedule": "daily"}, "stop.pre_stop", "cron"),
    ({"kind": "cron", "schedule": "*-*-* 02:00:00 Foo/Bar", "stop.pre_stop": DELETE}, "schedule",
     "unknown time zone"),
    ({"kind": "cron", "schedule": "*-*-* 02:00:00 Europe/Berlin", "stop.pre_stop": DELETE},
     None, None),
]


@pytest.mark.parametrize(("changes", "path", "fragment"), REFUSED,
                         ids=[f"{i}-{p}" for i, (_, p, _) in enumerate(REFUSED)])
def test_what_the_node_refuses_is_refused_at_its_field(changes, path, fragment):
    if path is None:  # the control case of its neighbours: this one is fine
        parse_spec(changed(changes))
        return
    problems = problems_of(changed(changes))
    assert [p for p, _ in problems] == [path], problems
    assert fragment in problems[0][1], problems[0][1]
    assert len(problems[0][1]) < 400


@pytest.mark.parametrize(("changes", "check"), [
    ({"resources.memory": "8E"[:-1] + "P"}, lambda s: s.resources.memory.max == 8 << 50),
    ({"resources.memory": (1 << 63) - 1}, lambda s: s.resources.memory.max == (1 << 63) - 1),
    ({"resources.memory": "1.5GiB"}, lambda s: s.resources.memory.max == 3 << 29),
    ({"resources.cpu": "0.25"}, lambda s: s.resources.cpu.max == 0.25),
    ({"stop.signal": "SIGINT"}, lambda s: s.stop.signal == "SIGINT"),
    ({"stop.signal": "SIGKILL"}, lambda s: s.stop.signal == "SIGKILL"),
    ({"stop.timeout": "1m30s"}, lambda s: s.stop.timeout == 90),
    ({"runtime.command": "/opt/a{b}/run"}, lambda s: s.runtime.command == "/opt/a{b}/run"),
    ({"runtime.command": "/opt/my app/run"}, lambda s: s.runtime.command == "/opt/my app/run"),
    ({"runtime.working_dir": "/srv/a b"}, lambda s: s.runtime.working_dir == "/srv/a b"),
    ({"runtime.args": ['a"b', "c\\d", "{e}", "$HOME", "%n"]},
     lambda s: s.runtime.args == ('a"b', "c\\d", "{e}", "$HOME", "%n")),
])
def test_what_the_node_accepts_still_parses(changes, check):
    assert check(parse_spec(changed(changes)))


# ------------------------------------------------------------------ whole documents

def test_a_5000_digit_integer_in_yaml_is_a_problem_not_a_traceback():
    message = root_problem("name: web\ncount: " + "9" * 5000 + "\n")
    assert "at most 32 characters" in message


def test_a_400_digit_float_in_yaml_is_a_problem():
    message = root_problem("name: web\ncount: " + "9" * 400 + ".5\n")
    assert "at most 32 characters" in message


def test_yaml_aliases_are_refused():
    text = ("name: web\nkind: batch\nresources: {cpu: 1, memory: 64M}\n"
            "runtime:\n  command: /bin/true\n  args: &a [x, y]\n"
            "stop: {pre_stop: *a}\n")
    assert "aliases" in root_problem(text)


@pytest.mark.timeout(60)
def test_an_alias_bomb_is_refused_before_it_expands():
    """The report's file: 60,000 aliases in 244 KB expanded to 240 MB of argv."""
    anchors = "a: &a [" + ", ".join(["xxxxxxxxxx"] * 400) + "]\n"
    bomb = "runtime:\n  command: /bin/true\n  args: [" + ", ".join(["*a"] * 30000) + "]\n"
    text = "name: web\nkind: batch\nresources: {cpu: 1, memory: 64M}\nx: \n  " + anchors + bomb
    assert len(text) < 256 * 1024
    assert "aliases" in root_problem(text)


def test_deep_nesting_is_a_problem_not_a_recursion_error():
    message = root_problem("name: " + "[" * 50000 + "]" * 50000 + "\n")
    assert "nested" in message


def test_a_spec_read_back_as_json_with_huge_numbers_is_a_problem():
    data = changed({"priority": int("9" * 4000), "resources.memory": int("9" * 4000)})
    problems = problems_of(json.loads(json.dumps(data)))
    assert sorted(p for p, _ in problems) == ["priority", "resources.memory"]


# ------------------------------------------ parser and renderer: one set of rules

def test_the_parser_and_the_renderer_read_the_same_grammar_file():
    from ansible_collections.walle.pool.plugins.module_utils import walle_grammar as node_grammar

    assert Path(node_grammar.__file__).resolve() == Path(grammar.__file__).resolve()


# ----------------------------------- whatever parses, renders and systemd loads (fuzz)

EDGE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
                    max_size=12) | st.sampled_from(
    ['a"b', "c\\d", "{e}", "${HOME}", "$$", "%n%%", "'q'", ";", "#x", "x ", " x", "\\", "=",
     "é ✓", ""])
PATH_PART = st.text(st.sampled_from("ab{}%#;=@~ü-_. 1"), min_size=1, max_size=6)


@st.composite
def tricky_specs(draw, programs: list[str]):
    runtime = {"command": draw(st.sampled_from(programs)),
               "args": draw(st.lists(EDGE_TEXT, max_size=5)),
               "env": draw(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}",
                                                         fullmatch=True),
                                           EDGE_TEXT, max_size=3)),
               "working_dir": "/" + "/".join(draw(st.lists(PATH_PART, min_size=1,
                                                           max_size=3)))}
    stop = {"signal": draw(st.sampled_from(grammar.STOP_SIGNALS)),
            "timeout": draw(st.sampled_from([0.001, "1m30s", 86400, "250ms"])),
            "pre_stop": [draw(st.sampled_from(programs)), *draw(st.lists(EDGE_TEXT,
                                                                          max_size=3))]}
    memory = draw(st.sampled_from(["1", "1.5K", "512M", "8191P", (1 << 63) - 1, "64MiB"]))
    kind = draw(st.sampled_from(["service", "batch", "cron"]))
    spec = {"name": "web", "kind": kind, "resources": {"cpu": 0.5, "memory": memory},
            "runtime": runtime, "stop": stop}
    if kind == "cron":
        spec["schedule"] = draw(st.sampled_from(
            ["daily", " daily", "Daily", "Mon..Fri 09:30", "*:0/15", "*-*-* 02:00:00 UTC",
             "*-*-* 02:00:00 ", "Sat,Sun *-*-1..7 04:00", "*-*-* 02:00:00 Foo/Bar",
             "Mon 02:00 Europe/Berlin"]))
        if draw(st.booleans()):
            del stop["pre_stop"]
    return spec


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> list[str]:
    """Executables whose paths have the characters systemd does allow ({ } % # ; space ...)."""
    root = tmp_path_factory.mktemp("progs")
    out = []
    for name in ("plain", "a{b}", "50%", "#x", "a;b", "sp ace", "é", "a=b", "@at"):
        folder = root / name
        folder.mkdir()
        program = folder / "run"
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
        out.append(str(program))
    return out


def render_units(spec, wu) -> dict[str, str]:
    from walle.service import params

    class Grant:
        cpu_weight, cpu_quota_percent = 100, 50
        memory_min, memory_high, memory_max = spec.resources.memory.min, None, \
            spec.resources.memory.max

    work = params.workload_args(spec, 0)
    sl = params.slice_args(spec, 0, Grant())
    slice_text = wu.render_slice(sl["name"], description=sl["description"], **{
        k: v for k, v in sl.items() if k not in ("name", "state", "description")})
    by_kind = {"service": dict(service_type="exec", restart=work.get("restart")),
               "batch": dict(service_type="exec", restart="on-failure",
                             start_limit_burst=work.get("retries")),
               "cron": dict(service_type="oneshot")}[spec.kind]
    if spec.kind == "cron":
        assert not work.get("pre_stop")  # walle_workload refuses a pre_stop for cron
    service = wu.render_service(
        work["name"], slice=work["slice"], argv=[work["command"], *work["args"]],
        env=work["env"], user=work.get("user"), working_dir=work.get("working_dir"),
        pre_stop=work.get("pre_stop"), stop_signal=work["stop_signal"],
        stop_timeout=work["stop_timeout"], description=work["description"], **by_kind)
    units = {f"{work['name']}.service": service, sl["name"]: slice_text}
    if spec.kind == "cron":
        units[f"{work['name']}.timer"] = wu.render_timer(work["name"],
                                                         schedule=work["schedule"],
                                                         description=work["description"])
    return units


def systemd_verify(folder: Path, units: dict[str, str]) -> list[str]:
    for name, text in units.items():
        (folder / name).write_text(text)
    paths = [str(folder / n) for n in units if not n.endswith(".slice")]
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *paths],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    return [] if proc.returncode == 0 else proc.stderr.splitlines()


@pytest.fixture(scope="module")
def walle_units():
    from ansible_collections.walle.pool.plugins.module_utils import walle_units as wu

    return wu


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
@pytest.mark.timeout(600)
def test_whatever_the_parser_accepts_renders_and_systemd_loads(programs, walle_units,
                                                               tmp_path_factory):
    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(data=tricky_specs(programs))
    def check(data):
        try:
            spec = parse_spec(data)
        except SpecError:
            return  # refused: nothing reaches a node
        units = render_units(spec, walle_units)
        problems = systemd_verify(tmp_path_factory.mktemp("units"), units)
        assert not [p for p in problems if "Special user" not in p], (data, units, problems)
        argv = walle_units.split_exec_words(
            next(v for _s, k, v in walle_units.parse_unit(units["walle-web-0.service"])
                 if k == "ExecStart"))
        assert argv == [spec.runtime.command, *spec.runtime.args]

    check()


# ------------------------------------------------------- the report's files, via the CLI

HOSTILE_FILES = {
    "cpu-400-digits": ("name: web\nkind: batch\nresources: {cpu: " + "9" * 400 + ", memory: 64M}"
                       "\nruntime: {command: /bin/true}\n", "<root>"),
    "duration-400-digits": ("name: web\nkind: batch\nresources: {cpu: 1, memory: 64M}\n"
                            "runtime: {command: /bin/true}\nstop: {timeout: " + "9" * 400 +
                            "}\n", "<root>"),
    "count-5000-digits": ("name: web\ncount: " + "9" * 5000 + "\n", "<root>"),
    "alias-bomb": ("name: web\nkind: batch\nresources: {cpu: 1, memory: 64M}\nx: &a [" +
                   ", ".join(["xxxxxxxx"] * 100) + "]\nruntime:\n  command: /bin/true\n"
                   "  args: [" + ", ".join(["*a"] * 20000) + "]\n", "<root>"),
    "memory-1e30": ("name: web\nkind: batch\nresources: {cpu: 1, memory: " + "1" + "0" * 30 +
                    "}\nruntime: {command: /bin/true}\n", "resources.memory"),
    "sigstop": ("name: web\nkind: batch\nresources: {cpu: 1, memory: 64M}\n"
                "runtime: {command: /bin/true}\nstop: {signal: SIGSTOP}\n", "stop.signal"),
    "quote-in-command": ("name: web\nkind: batch\nresources: {cpu: 1, memory: 64M}\n"
                         "runtime: {command: '/opt/a\"b'}\n", "runtime.command"),
    "working-dir-space": ("name: web\nkind: batch\nresources: {cpu: 1, memory: 64M}\n"
                          "runtime: {command: /bin/true, working_dir: '/srv '}\n",
                          "runtime.working_dir"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_walle_validate_reports_hostile_files_with_exit_2(case, tmp_path, capsys):
    from walle.cli.main import main

    text, field = HOSTILE_FILES[case]
    path = tmp_path / f"{case}.yml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: {field}: "), err[:300]
    assert "Traceback" not in err
