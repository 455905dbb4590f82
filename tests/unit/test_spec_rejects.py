"""Bad specs are refused with the exact field path and a message that says what is allowed."""

from __future__ import annotations

import copy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walle.jobspec import SpecError, load_spec_text, parse_spec

DELETE = object()  # marks a key to remove

BASE = {
    "name": "web",
    "kind": "service",
    "count": 3,
    "resources": {"cpu": "0.1-0.5", "memory": "32M-128M"},
    "runtime": {
        "type": "exec",
        "command": "/usr/bin/python3",
        "args": ["-m", "http.server", "8080"],
        "env": {"GREETING": "hello"},
        "user": "nobody",
        "working_dir": "/tmp",
    },
    "constraints": [{"attribute": "zone", "operator": "ne", "value": "z3"}],
    "data": ["clicklogs"],
    "health": {"type": "http", "path": "/", "port": 8080},
    "stop": {"signal": "SIGTERM", "timeout": "10s", "pre_stop": ["/bin/sh", "-c", "echo bye"]},
    "service": {"name": "web", "port": 8080, "tags": ["v1"]},
}

CRON = {"kind": "cron", "schedule": "*-*-* 02:00:00", "stop.pre_stop": DELETE}  # no hook: oneshot
NSPAWN = {"runtime.type": "nspawn", "runtime.image": "web:1.0"}


def changed(changes: dict, base: dict = BASE) -> dict:
    """A deep copy of `base` with each "a.b[1].c" path set to its value (or removed)."""
    data = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, last = [int(t[1:-1]) if t.startswith("[") else t
                          for t in re.findall(r"\[\d+\]|[^.\[\]]+", path)]
        node = data
        for step in parents:
            node = node[step]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


def problems_of(data: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return [(p.path, p.message) for p in caught.value.problems]


def test_base_spec_is_valid():
    assert parse_spec(BASE).name == "web"


# (changes to BASE, expected path, a key part of the message)
BAD = [
    # name and kind
    ({"name": "Web"}, "name", "not a valid job name"),
    ({"name": "a--b"}, "name", "without '--'"),
    ({"name": "web-"}, "name", "not ending with '-'"),
    ({"name": "a" * 41}, "name", "1-40 characters"),
    ({"name": "web_1"}, "name", "not a valid job name"),
    ({"name": 7}, "name", "expected a string"),
    ({"name": DELETE}, "name", "required"),
    ({"kind": "servce"}, "kind", "did you mean 'service'"),
    ({"priorty": 5}, "priorty", "did you mean 'priority'"),
    # counts and choices
    ({"count": -1}, "count", "from 0 to 1000"),
    ({"count": 1001}, "count", "from 0 to 1000"),
    ({"count": "3"}, "count", "whole number"),
    ({"count": True}, "count", "the boolean true"),
    ({"priority": 101}, "priority", "from 0 to 100"),
    ({"strategy": "pack"}, "strategy", "spread, binpack"),
    ({"restart": "sometimes"}, "restart", "always, on-failure, no"),
    ({"retries": 2}, "retries", "only batch and cron"),
    # resources
    ({"resources.cpu": "2-1"}, "resources.cpu", "larger than the maximum"),
    ({"resources.cpu": 0}, "resources.cpu", "more than 0 cores"),
    ({"resources.cpu": "lots"}, "resources.cpu", "expected cores"),
    ({"resources.cpu": "1-x"}, "resources.cpu", "bad range '1-x'"),
    ({"resources.cpu": DELETE}, "resources.cpu", "required"),
    ({"resources.memory": "12X"}, "resources.memory", "expected a size"),
    ({"resources.memory": 0}, "resources.memory", "more than 0 bytes"),
    ({"resources.memory": {"min": "1G", "max": "512M"}}, "resources.memory",
     "larger than the maximum"),
    ({"resources.memory": {"min": "32M", "mx": "1G"}}, "resources.memory.mx",
     "did you mean 'max'"),
    ({"resources.memory": {"max": "1G"}}, "resources.memory.min", "required"),
    ({"resources.gpus": 1.5}, "resources.gpus", "whole number"),
    ({"resources.gpus": -1}, "resources.gpus", "whole number"),
    ({"resources.io_weight": 0}, "resources.io_weight", "from 1 to 10000"),
    ({"resources.disk": "-1G"}, "resources.disk", "expected a size"),
    ({"resources.cpus": 1}, "resources.cpus", "did you mean 'cpu'"),
    # runtime
    ({"runtime.type": "docker"}, "runtime.type", "exec, nspawn, lxc"),
    ({"runtime.command": "usr/bin/python3"}, "runtime.command", "absolute"),
    ({"runtime.command": "/usr/../bin/sh"}, "runtime.command", "without '..'"),
    ({"runtime.command": "/usr/bin/"}, "runtime.command", "trailing '/'"),
    ({"runtime.command": DELETE}, "runtime.command", "required for the exec runtime"),
    ({"runtime.image": "web:1.0"}, "runtime.image", "only the container runtimes (nspawn, lxc)"),
    ({"runtime.type": "nspawn"}, "runtime.image", "required for the nspawn runtime"),
    ({"runtime.args": "-m http.server"}, "runtime.args", "expected a list"),
    ({"runtime.args": [["nested"]]}, "runtime.args[0]", "expected a string"),
    ({"runtime.args": ["ok", True]}, "runtime.args[1]", "quote it"),
    ({"runtime.env": ["A=1"]}, "runtime.env", "mapping of NAME: value"),
    ({"runtime.env": {"1BAD": "x"}}, "runtime.env", "environment name '1BAD'"),
    ({"runtime.env": {"A-B": "x"}}, "runtime.env", "environment name 'A-B'"),
    ({"runtime.env.LIST": [1]}, "runtime.env.LIST", "expected a string, got a list"),
    ({"runtime.env.MAP": {"a": 1}}, "runtime.env.MAP", "expected a string, got a mapping"),
    ({"runtime.env.FLAG": True}, "runtime.env.FLAG", "quote it"),
    ({"runtime.user": "Root"}, "runtime.user", "not a valid user name"),
    ({"runtime.user": "a" * 33}, "runtime.user", "up to 32 characters"),
    ({"runtime.user": "../root"}, "runtime.user", "not a valid user name"),
    ({"runtime.working_dir": "tmp"}, "runtime.working_dir", "absolute"),
    # images: NAME:VERSION or NAME@sha256:HEX of the image store, never a host path
    ({**NSPAWN, "runtime.image": "/var/lib/machines/web"}, "runtime.image", "no version"),
    ({**NSPAWN, "runtime.image": "/"}, "runtime.image", "NAME:VERSION"),
    ({**NSPAWN, "runtime.image": "/:1"}, "runtime.image", "no host path"),
    ({**NSPAWN, "runtime.image": "web"}, "runtime.image", "has no version"),
    ({**NSPAWN, "runtime.image": "../../etc:1"}, "runtime.image", "not an image name"),
    ({**NSPAWN, "runtime.image": "team/../x:1"}, "runtime.image", "not an image name"),
    ({**NSPAWN, "runtime.image": "Web:1.0"}, "runtime.image", "lowercase"),
    ({**NSPAWN, "runtime.image": "web:"}, "runtime.image", "not an image version"),
    ({**NSPAWN, "runtime.image": "web:1/2"}, "runtime.image", "not an image version"),
    ({**NSPAWN, "runtime.image": "web@sha256:abc"}, "runtime.image", "64 lowercase hex"),
    ({**NSPAWN, "runtime.image": "web@md5:" + "a" * 64}, "runtime.image", "sha256:"),
    ({**NSPAWN, "runtime.image": 7}, "runtime.image", "expected a string"),
    ({"runtime.user": "root"}, "runtime.user", "runtime.privileged: true"),
    ({"runtime.capabilities": ["CAP_NOPE"]}, "runtime.capabilities[0]", "CAP_NET_ADMIN"),
    ({"runtime.privileged": True, "runtime.capabilities": ["CAP_NET_RAW"]},
     "runtime.capabilities", "already has every capability"),
    ({**NSPAWN, "runtime.privileged": True}, "runtime.privileged", "exec runtime"),
    ({"secrets": ["db"]}, "secrets", "a mapping"),
    ({"secrets": {"db": {"consul": "../walle/jobs/x"}}}, "secrets.db.consul", "no '..'"),
    ({"secrets": {"db": {"file": "/etc/shadow"}}}, "secrets.db.file", "no leading '/'"),
    ({"secrets": {"db": {"vault": "x"}}}, "secrets.db.vault", "unknown key"),
    ({"secrets": {"db": {}}}, "secrets.db", "exactly one source"),
    ({"secrets": {"a/b": {"consul": "x"}}}, "secrets", "secret name"),
    ({**NSPAWN, "secrets": {"db": {"consul": "x"}}}, "secrets", "exec runtime only"),
    # constraints and data
    ({"constraints": {"zone": "z1"}}, "constraints", "expected a list"),
    ({"constraints[0].operator": "neq"}, "constraints[0].operator", "eq, ne, in"),
    ({"constraints[0].operator": DELETE}, "constraints[0].operator", "required"),
    ({"constraints[0].value": ["a"]}, "constraints[0].value", "expected a string"),
    ({"constraints[0].attribute": "zon"}, "constraints[0].attribute", "did you mean 'zone'"),
    ({"constraints[0].attribute": DELETE}, "constraints[0].attribute", "required"),
    ({"constraints[0].operator": "in", "constraints[0].value": []}, "constraints[0].value",
     "non-empty list"),
    ({"constraints[0].operator": "regex", "constraints[0].value": "("},
     "constraints[0].value", "not a valid regular expression"),
    ({"constraints[0].operator": "max_per", "constraints[0].value": 0},
     "constraints[0].value", "from 1 to 1000"),
    ({"constraints[0].operator": "max_per", "constraints[0].value": "2"},
     "constraints[0].value", "whole number"),
    ({"constraints": [{"operator": "distinct_hosts", "value": 2}]}, "constraints[0].value",
     "distinct_hosts takes no value"),
    ({"constraints[0].weight": 3}, "constraints[0].weight", "unknown key"),
    ({"data": "clicklogs"}, "data", "expected a list"),
    ({"data": ["click,logs"]}, "data[0]", "not a valid dataset name"),
    # health
    ({"health.type": "grpc"}, "health.type", "http, tcp, ttl"),
    ({"health.port": DELETE, "service.port": DELETE}, "health.port",
     "set health.port or service.port"),
    ({"health": {"type": "ttl"}}, "health.ttl", "required for ttl checks"),
    # script checks would run argv from the Consul agent, as its user, outside the sandbox
    ({"health": {"type": "script", "args": ["/bin/check"]}}, "health.type",
     "would run the command from the Consul agent"),
    ({"health": {"type": "script"}}, "health.type", "use an http, tcp or ttl check"),
    ({"health": {"type": "ttl", "ttl": "30s", "args": ["/bin/x"]}}, "health.args",
     "unknown key 'args'"),
    ({"health.ttl": "30s"}, "health.ttl", "only ttl checks have ttl"),
    ({"health": {"type": "tcp", "path": "/x"}}, "health.path", "only http checks have path"),
    ({"health.path": "status"}, "health.path", "starting with '/'"),
    ({"health.path": "/a b"}, "health.path", "without spaces"),
    ({"health.port": 0}, "health.port", "from 1 to 65535"),
    ({"health.interval": "2 weeks"}, "health.interval", "expected a duration"),
    ({"health.interval": 0}, "health.interval", "must be between"),
    ({"health.deregister_after": "30s"}, "health.deregister_after", "must be between 60s"),
    # stop
    ({"stop.signal": "TERM"}, "stop.signal", "did you mean SIGTERM"),
    ({"stop.signal": "SIGFOO"}, "stop.signal", "not a signal name"),
    ({"stop.signal": 15}, "stop.signal", "expected a string"),
    ({"stop.timeout": "-1s"}, "stop.timeout", "expected a duration"),
    ({"stop.timeout": "10 s"}, "stop.timeout", "expected a duration"),
    ({"stop.pre_stop": ["echo", "bye"]}, "stop.pre_stop[0]", "absolute"),
    ({"stop.drain": "11m"}, "stop.drain", "between 0s and 600s"),
    ({"stop.drain": "soon"}, "stop.drain", "expected a duration"),
    ({"stop.grace": "5s"}, "stop.grace", "unknown key"),
    # service discovery
    ({"service.port": 70000}, "service.port", "from 1 to 65535"),
    ({"service.name": "Web_1"}, "service.name", "not a valid service name"),
    ({"service.tags": ["a b"]}, "service.tags[0]", "not a valid tag"),
    ({"service.tags": ["v1", "a.b"]}, "service.tags[1]", "not a valid tag"),
    # load balancing (roles/lb)
    ({"service.lb": {"port": 0}}, "service.lb.port", "from 1 to 65535"),
    ({"service.lb": {}}, "service.lb.port", "required"),
    ({"service.lb": 80}, "service.lb", "expected a mapping"),
    ({"service.lb": {"port": 80, "mode": "udp"}}, "service.lb.mode", "one of http, tcp"),
    ({"service.lb": {"port": 80, "bind": "0.0.0.0"}}, "service.lb.bind", "unknown key"),
    ({"service.lb": {"port": "80\n  bind :1"}}, "service.lb.port", "whole number"),
    ({"service.lb": {"port": 80}, "service.port": DELETE, "health.port": 8080},
     "service.port", "required when service.lb is set"),
    # schedule and update
    ({"kind": "cron", "stop.pre_stop": DELETE}, "schedule", "required for cron jobs"),
    ({"schedule": "daily"}, "schedule", "only cron jobs have a schedule"),
    ({**CRON, "schedule": "every day"}, "schedule", "not a systemd OnCalendar expression"),
    ({**CRON, "schedule": "*-*-* 02:00:00; rm -rf /"}, "schedule", "OnCalendar"),
    ({**CRON, "schedule": "UTC"}, "schedule", "OnCalendar"),
    ({**CRON, "schedule": 5}, "schedule", "expected a string"),
    ({"concurrency": "forbid"}, "concurrency", "only cron jobs have a concurrency policy"),
    ({"scaling": {"min": 1, "max": 1001, "metric": "cpu", "target": 50}}, "scaling.max",
     "from 0 to 1000"),
    ({"scaling": {"min": -1, "max": 3, "metric": "cpu", "target": 50}}, "scaling.min",
     "from 0 to 1000"),
    ({"scaling": {"min": 4, "max": 3, "metric": "cpu", "target": 50}}, "scaling.min",
     "min 4 is above max 3"),
    ({"scaling": {"min": 1, "max": 3, "metric": "cpuu", "target": 50}}, "scaling.metric",
     "did you mean 'cpu'"),
    ({"scaling": {"min": 1, "max": 3, "metric": {"graphite": "x"}, "target": 50}},
     "scaling.metric", "unknown metric"),
    ({"scaling": {"min": 1, "max": 3, "metric": {"prometheus": ""}, "target": 5}},
     "scaling.metric.prometheus", "Prometheus expression"),
    ({"scaling": {"min": 1, "max": 3, "metric": {"prometheus": "up\n"}, "target": 5}},
     "scaling.metric.prometheus", "control"),
    ({"scaling": {"min": 1, "max": 3, "metric": "memory", "target": 150}}, "scaling.target",
     "1 to 100"),
    ({"scaling": {"min": 1, "max": 3, "metric": "cpu", "target": 0}}, "scaling.target",
     "above 0"),
    ({"scaling": {"min": 1, "max": 3, "metric": "cpu"}}, "scaling.target", "required"),
    ({"scaling": {"min": 1, "max": 3, "metric": "cpu", "target": 50, "cooldown": "2d"}},
     "scaling.cooldown", "between"),
    ({"count": 5, "scaling": {"min": 1, "max": 3, "metric": "cpu", "target": 50}}, "count",
     "outside scaling.min..max"),
    ({**CRON, "scaling": {"min": 1, "max": 3, "metric": "cpu", "target": 50}}, "scaling",
     "only services scale"),
    ({**CRON, "concurrency": {"policy": "allow", "max": 0}}, "concurrency.max", "from 1 to 20"),
    ({**CRON, "concurrency": {"policy": "allow", "max": "lots"}}, "concurrency.max",
     "whole number"),
    ({**CRON, "concurrency": {"policy": "forbid", "max": 2}}, "concurrency.max",
     "only policy allow"),
    ({**CRON, "concurrency": {"max": 2}}, "concurrency.policy", "required"),
    ({**CRON, "concurrency": {"policy": "alow"}}, "concurrency.policy", "did you mean 'allow'"),
    ({**CRON, "concurrency": {"policy": "allow", "limit": 2}}, "concurrency.limit",
     "unknown key"),
    ({**CRON, "concurrency": 2}, "concurrency", "{policy: allow, max: 3}"),
    ({**CRON, **NSPAWN, "concurrency": "allow"}, "concurrency", "nspawn runtime cannot"),
    ({**CRON, "concurrency": "replaec"}, "concurrency", "did you mean 'replace'"),
    ({**CRON, "retries": 101}, "retries", "from 0 to 100"),
    ({"update": {"max_parallel": 0}}, "update.max_parallel", "from 1 to 1000"),
    ({"update": {"auto_rollback": "yes please"}}, "update.auto_rollback", "true or false"),
    ({"update": {"health_timeout": "soon"}}, "update.health_timeout", "expected a duration"),
]


@pytest.mark.parametrize(("changes", "path", "fragment"), BAD,
                         ids=[f"{i}-{p}" for i, (_, p, _) in enumerate(BAD)])
def test_bad_field_is_reported_at_its_path(changes, path, fragment):
    problems = problems_of(changed(changes))
    assert [p for p, _ in problems] == [path], problems
    assert fragment in problems[0][1]


def test_at_least_forty_distinct_bad_inputs():
    assert len({repr(c) for c, _, _ in BAD}) >= 40


# Every string field that ends up in a unit file or Consul, as (changes, path).
STRING_FIELDS = [
    ({"name": "web{}"}, "name"),
    ({"runtime.command": "/usr/bin/python3{}"}, "runtime.command"),
    ({"runtime.args[0]": "ok{}ExecStartPre=/bin/rm -rf /"}, "runtime.args[0]"),
    ({"runtime.env.GREETING": "hi{}[Service]"}, "runtime.env.GREETING"),
    ({"runtime.env": {"A{}B": "x"}}, "runtime.env"),
    ({"runtime.user": "root{}User=root"}, "runtime.user"),
    ({"runtime.working_dir": "/tmp{}"}, "runtime.working_dir"),
    ({**NSPAWN, "runtime.image": "web{}"}, "runtime.image"),
    ({"constraints[0].attribute": "zone{}"}, "constraints[0].attribute"),
    ({"constraints[0].value": "z3{}"}, "constraints[0].value"),
    ({"constraints[0].operator": "in", "constraints[0].value": ["a", "b{}"]},
     "constraints[0].value[1]"),
    ({"constraints[0].operator": "regex", "constraints[0].value": "^z{}"},
     "constraints[0].value"),
    ({"data[0]": "clicklogs{}"}, "data[0]"),
    ({"health.path": "/{}X-Injected: 1"}, "health.path"),
    ({"stop.signal": "SIGTERM{}"}, "stop.signal"),
    ({"stop.pre_stop[1]": "-c{}ExecStop=/bin/rm -rf /"}, "stop.pre_stop[1]"),
    ({"service.name": "web{}"}, "service.name"),
    ({"service.tags[0]": "v1{}evil"}, "service.tags[0]"),
    ({**CRON, "schedule": "*-*-* 02:00:00{}ExecStart=/bin/sh"}, "schedule"),
]
CONTROL_CHARS = ["\n", "\r", "\x00", "\t", "\x1b", "\x7f", "\u2028"]


@pytest.mark.parametrize(("changes", "path"), STRING_FIELDS,
                         ids=[p for _, p in STRING_FIELDS])
@pytest.mark.parametrize("char", CONTROL_CHARS, ids=[repr(c) for c in CONTROL_CHARS])
def test_control_characters_are_refused_in_every_string_field(changes, path, char):
    injected = {k: _inject(v, char) for k, v in changes.items()}
    problems = problems_of(changed(injected))
    assert [p for p, _ in problems] == [path], problems
    assert "control character" in problems[0][1]
    assert repr(char)[1:-1] in problems[0][1]  # shown escaped, never raw
    assert char not in problems[0][1]


def _inject(value, char):
    if isinstance(value, str):
        return value.replace("{}", char)
    if isinstance(value, list):
        return [_inject(v, char) for v in value]
    if isinstance(value, dict):
        return {_inject(k, char): _inject(v, char) for k, v in value.items()}
    return value


def test_every_problem_is_reported_in_one_pass():
    problems = problems_of(changed({
        "name": "Web",
        "count": -1,
        "resources.cpu": "2-1",
        "runtime.args": ["ok\nExecStartPre=/bin/rm -rf /"],
        "runtime.user": "root\nUser=root",
        "stop.pre_stop[1]": "x\ry",
        "service.tags": ["fine", "bad tag"],
        "colour": "blue",
    }))
    assert sorted(p for p, _ in problems) == sorted([
        "name", "count", "resources.cpu", "runtime.args[0]", "runtime.user",
        "stop.pre_stop[1]", "service.tags[1]", "colour"])


def test_error_text_is_one_line_per_problem_with_source():
    text = "name: Web\nkind: batch\nresources: {cpu: 1, memory: 1G}\nruntime: {command: x}\n"
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, source="job.yml")
    lines = str(caught.value).splitlines()
    assert lines == [f"job.yml: {p.path}: {p.message}" for p in caught.value.problems]
    assert [p.path for p in caught.value.problems] == ["name", "runtime.command"]


# Whole-document problems, given as YAML text.
BAD_DOCUMENTS = [
    ("", "the spec is empty"),
    ("- web\n- batch\n", "expected a mapping"),
    ("name: [unclosed\n", "not valid YAML: line"),
    ("name: web\nname: other\n", "duplicate key 'name'"),
    ("name: web\n\tkind: batch\n", "not valid YAML"),
    ("#" * (256 * 1024 + 1), "larger than"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_DOCUMENTS)
def test_bad_documents_are_reported_at_the_root(text, fragment):
    with pytest.raises(SpecError) as caught:
        load_spec_text(text)
    assert [p.path for p in caught.value.problems] == ["<root>"]
    assert fragment in caught.value.problems[0].message


JSON_LEAF = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats()
             | st.text(max_size=12))
JSON_VALUE = st.recursive(
    JSON_LEAF, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3), max_leaves=8)
FIELD_PATHS = [
    "name", "kind", "count", "priority", "strategy", "restart", "retries", "schedule",
    "resources", "resources.cpu", "resources.memory", "resources.gpus", "runtime",
    "runtime.type", "runtime.command", "runtime.args", "runtime.args[0]", "runtime.env",
    "runtime.user", "constraints", "constraints[0]", "constraints[0].value", "data", "health",
    "health.type", "health.port", "stop", "stop.timeout", "stop.pre_stop", "service",
    "service.tags", "update"]


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(FIELD_PATHS), value=JSON_VALUE)
def test_any_value_anywhere_gives_a_spec_or_one_line_problems(path, value):
    try:
        parse_spec(changed({path: value}))
    except SpecError as exc:
        assert exc.problems
        assert all("\n" not in str(p) and "\r" not in str(p) for p in exc.problems)
