"""The scheduler role's unit and environment file, rendered from the role's own defaults with
jinja2, parsed, checked against the `walle` CLI and verified by `systemd-analyze verify`."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from walle.cli.main import build_parser

ROLE = Path(__file__).resolve().parents[2] / "roles" / "scheduler"
ENV_REF = re.compile(r"\$\{(\w+)\}")


def role_vars(**overrides) -> dict:
    """The role's variables as Ansible resolves them: defaults that are templates of other
    variables (walle_scheduler_node_down_grace from the fence time) are rendered."""
    values = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    values |= yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    values |= overrides
    for _ in range(3):  # templates of templates
        values = {k: _resolved(v, values) for k, v in values.items()}
    return values


def _resolved(value, values: dict):
    """A default templated on other role variables, rendered; others (playbook_dir) as is."""
    if not isinstance(value, str) or "{{" not in value:
        return value
    try:
        return jinja_env().from_string(value).render(values)
    except jinja2.UndefinedError:
        return value


def jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["default"] = lambda value, fallback="": fallback if isinstance(
        value, jinja2.Undefined) else value
    env.filters["to_json"] = json.dumps
    return env


def render(template: str, **overrides) -> str:
    return jinja_env().get_template(template).render(role_vars(**overrides))


def parse_unit(text: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(text)
    return unit


def parse_env_file(text: str) -> dict[str, str]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def exec_start_argv(unit: configparser.ConfigParser, env: dict[str, str], host: str) -> list[str]:
    """ExecStart as systemd runs it: ${VAR} from the environment file, %H the host name."""
    line = unit["Service"]["ExecStart"].replace("%H", host)
    return [ENV_REF.sub(lambda m: env[m[1]], word) for word in shlex.split(line)]


def test_unit_runs_walle_scheduler_from_the_venv_with_restarts():
    unit = parse_unit(render("walle-scheduler.service.j2"))
    service = unit["Service"]
    defaults = role_vars()

    words = shlex.split(service["ExecStart"])
    assert words[:3] == [f"{defaults['walle_scheduler_venv']}/bin/walle", "scheduler", "run"]
    pairs = dict(zip(words[3::2], words[4::2], strict=True))
    assert pairs["--consul-addr"] == "${WALLE_CONSUL_HTTP_ADDR}"
    assert pairs["--inventory"] == "${WALLE_INVENTORY}"
    assert pairs["--name"] == "%H"
    assert service["Restart"] == "always"
    assert service["RestartSec"] == "2"
    assert service["EnvironmentFile"] == defaults["walle_scheduler_env_file"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_instance_name_variable_reaches_the_unit():
    unit = parse_unit(render("walle-scheduler.service.j2", walle_scheduler_instance_name="ctl-a"))
    words = shlex.split(unit["Service"]["ExecStart"])
    assert words[words.index("--name") + 1] == "ctl-a"


def test_env_file_defines_every_variable_the_unit_uses_with_the_role_values():
    overrides = {"walle_scheduler_consul_http_addr": "http://10.77.9.1:8500",
                 "walle_scheduler_log_level": "DEBUG", "walle_scheduler_lock_delay": 7}
    env = parse_env_file(render("scheduler.env.j2", **overrides))
    used = set(ENV_REF.findall(render("walle-scheduler.service.j2")))

    assert used <= set(env), f"unit uses {sorted(used - set(env))} the env file lacks"
    assert env["WALLE_CONSUL_HTTP_ADDR"] == "http://10.77.9.1:8500"
    assert env["WALLE_LOG_LEVEL"] == "DEBUG"
    assert env["WALLE_LOCK_DELAY"] == "7"
    assert env["WALLE_INVENTORY"] == role_vars()["walle_scheduler_inventory"]


def test_walle_cli_accepts_the_command_line_the_unit_runs():
    unit = parse_unit(render("walle-scheduler.service.j2"))
    env = parse_env_file(render("scheduler.env.j2"))
    argv = exec_start_argv(unit, env, host="ctl1")

    args = build_parser().parse_args(argv[1:])

    assert (args.command, args.scheduler_action) == ("scheduler", "run")
    assert args.consul_addr == role_vars()["walle_scheduler_consul_http_addr"]
    assert args.inventory == role_vars()["walle_scheduler_inventory"]
    assert args.name == "ctl1"
    assert args.lock_delay == float(role_vars()["walle_scheduler_lock_delay"])


def test_privilege_policy_defaults_to_deny_and_the_role_variables_reach_the_cli():
    env = parse_env_file(render("scheduler.env.j2"))
    default = build_parser().parse_args(exec_start_argv(
        parse_unit(render("walle-scheduler.service.j2")), env, host="ctl1")[1:])
    assert default.allow_privileged is False and default.allow_capability == []
    assert default.secrets_dir == "/etc/walle/secrets"

    unit = parse_unit(render("walle-scheduler.service.j2", walle_scheduler_allow_privileged=True,
                             walle_scheduler_allowed_capabilities=["CAP_NET_BIND_SERVICE",
                                                                   "CAP_NET_RAW"],
                             walle_scheduler_secrets_dir="/srv/secrets"))
    args = build_parser().parse_args(exec_start_argv(unit, env, host="ctl1")[1:])
    assert args.allow_privileged is True and args.secrets_dir == "/srv/secrets"
    assert args.allow_capability == ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]


def test_prometheus_addr_variable_reaches_the_cli_only_when_set():
    env = parse_env_file(render("scheduler.env.j2"))
    default = build_parser().parse_args(exec_start_argv(
        parse_unit(render("walle-scheduler.service.j2")), env, host="ctl1")[1:])
    assert default.prometheus_addr is None and "WALLE_PROMETHEUS_ADDR" not in env

    url = "http://10.77.0.1:9090"
    env = parse_env_file(render("scheduler.env.j2", walle_scheduler_prometheus_addr=url))
    unit = parse_unit(render("walle-scheduler.service.j2", walle_scheduler_prometheus_addr=url))
    args = build_parser().parse_args(exec_start_argv(unit, env, host="ctl1")[1:])
    assert env["WALLE_PROMETHEUS_ADDR"] == url and args.prometheus_addr == url


def test_the_preflight_refuses_a_prometheus_addr_that_is_no_plain_url():
    """The role's own assert (tasks/preflight.yml), evaluated with Ansible's match/search
    tests: an address that systemd or the environment file would rewrite never reaches them."""
    from ansible.plugins.test.core import TestModule
    preflight = yaml.safe_load((ROLE / "tasks/preflight.yml").read_text())
    that = [c for c in preflight[0]["ansible.builtin.assert"]["that"]
            if "prometheus_addr" in c]
    env = jinja2.Environment()
    env.tests.update(TestModule().tests())

    def accepted(url: str) -> bool:
        return all(env.from_string("{{ " + c + " }}").render(
            walle_scheduler_prometheus_addr=url) == "True" for c in that)
    assert len(that) == 2
    for good in ("", "http://10.77.0.1:9090", "https://prom.example:9090/prometheus"):
        assert accepted(good), good
    for bad in ("10.77.0.1:9090", "ftp://x", "http://a b", "http://x/%H", "http://x/${A}",
                'http://x/"', "http://x/'", "http://x\\y"):
        assert not accepted(bad), bad


def systemd_verify(unit_path: Path) -> list[str]:
    """Problems `systemd-analyze verify` reports about the unit (it works without systemd as
    PID 1: it loads the file, parses every directive and checks ExecStart is executable)."""
    proc = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True,
                          text=True, timeout=60, check=False)
    problems = [ln for ln in proc.stderr.splitlines() if unit_path.name in ln]
    if proc.returncode != 0:
        problems.append(f"exit {proc.returncode}: {proc.stderr.strip()}")
    return problems


def write_verifiable_unit(tmp_path: Path, extra: str = "") -> Path:
    """The unit as the role writes it, pointed at a stub walle and env file under tmp_path."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "walle"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    env_file = tmp_path / "scheduler.env"
    env_file.write_text(render("scheduler.env.j2"))
    text = render("walle-scheduler.service.j2", walle_scheduler_venv=str(venv),
                  walle_scheduler_env_file=str(env_file))
    unit_path = tmp_path / "walle-scheduler.service"
    unit_path.write_text(text.replace("[Install]", extra + "[Install]"))
    return unit_path


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    assert systemd_verify(write_verifiable_unit(tmp_path)) == []


@needs_systemd_analyze
@pytest.mark.parametrize(("directive", "reported"), [("ProtectSystem=sometimes", "sometimes"),
                                                     ("RestartSecs=2", "RestartSecs")])
def test_systemd_analyze_verify_would_catch_a_bad_directive(tmp_path, directive, reported):
    unit_path = write_verifiable_unit(tmp_path, extra=f"{directive}\n\n")
    assert any(reported in p for p in systemd_verify(unit_path))


def test_every_default_is_prefixed_commented_and_documented():
    text = (ROLE / "defaults" / "main.yml").read_text().splitlines()
    defaults = yaml.safe_load("\n".join(text))
    spec = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]

    assert set(defaults) == set(options)
    for name, value in defaults.items():
        assert name.startswith("walle_scheduler_"), name
        line = next(i for i, ln in enumerate(text) if ln.startswith(f"{name}:"))
        above = next(ln for ln in reversed(text[:line]) if not ln.startswith("walle_scheduler_"))
        assert above.startswith("#"), f"{name} has no comment above it"
        assert options[name]["default"] == value, f"{name}: argument_specs default differs"
        assert options[name].get("description"), name


# ----------------------------------------------------------------------------- Consul ACL/TLS

def role_task(file: str, module: str, dest_fragment: str) -> dict:
    tasks = yaml.safe_load((ROLE / "tasks" / file).read_text())
    return next(t for t in tasks if module in t and dest_fragment in str(t[module].get("dest")))


def test_env_file_is_root_only():
    task = role_task("configure.yml", "ansible.builtin.template", "walle_scheduler_env_file")
    args = task["ansible.builtin.template"]
    assert (args["owner"], args["group"], args["mode"]) == ("root", "root", "0600")


def test_the_scheduler_token_is_a_root_only_file_never_logged_and_named_by_the_env_file():
    task = role_task("configure.yml", "ansible.builtin.copy",
                     "walle_scheduler_consul_token_file")
    args = task["ansible.builtin.copy"]
    assert (args["owner"], args["group"], args["mode"]) == ("root", "root", "0600")
    assert args["content"].startswith("{{ walle_scheduler_consul_token")
    assert task["no_log"] is True
    env = parse_env_file(render("scheduler.env.j2", walle_scheduler_consul_token="tok-123",
                                walle_scheduler_consul_ca_file="/etc/walle/consul-ca.pem"))
    assert env["CONSUL_HTTP_TOKEN_FILE"] == role_vars()["walle_scheduler_consul_token_file"]
    assert env["CONSUL_CACERT"] == "/etc/walle/consul-ca.pem"
    # The token itself stays out of the environment: ansible-runner records its whole
    # environment in each run's artifacts, and every child (ansible, ssh) inherits it.
    assert "tok-123" not in render("scheduler.env.j2", walle_scheduler_consul_token="tok-123")
    assert "CONSUL_HTTP_TOKEN" not in env


def test_no_token_no_ca_means_no_consul_auth_variables():
    env = parse_env_file(render("scheduler.env.j2"))
    assert not {"CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT", "CONSUL_HTTP_TOKEN"} & set(env)
    assert env["WALLE_NODE_CONSUL_TOKEN_FILE"] == "" and env["WALLE_NODE_CONSUL_CA_FILE"] == ""


def test_the_unit_never_carries_a_token_and_passes_the_node_side_paths():
    overrides = {"walle_scheduler_consul_token": "tok-123",
                 "walle_scheduler_node_consul_token_file": "/etc/walle/consul-token",
                 "walle_scheduler_node_consul_ca_file": "/etc/walle/consul-ca.pem"}
    text = render("walle-scheduler.service.j2", **overrides)
    assert "tok-123" not in text and "TOKEN=" not in text
    unit = parse_unit(text)
    env = parse_env_file(render("scheduler.env.j2", **overrides))
    args = build_parser().parse_args(exec_start_argv(unit, env, host="ctl1")[1:])
    assert args.node_consul_token_file == "/etc/walle/consul-token"
    assert args.node_consul_ca_file == "/etc/walle/consul-ca.pem"


# ------------------------------------------------------------------- the nodes: Consul's catalog

def plugin_options() -> dict:
    text = (ROLE.parents[1] / "plugins" / "inventory" / "walle_consul.py").read_text()
    documentation = text.split('DOCUMENTATION = r"""', 1)[1].split('"""', 1)[0]
    return yaml.safe_load(documentation)["options"]


def test_the_scheduler_inventory_is_consuls_catalog_with_the_schedulers_token_and_ca():
    inventory = yaml.safe_load(render("walle_consul.yml.j2",
                                      walle_scheduler_consul_http_addr="https://10.77.9.1:8501",
                                      walle_scheduler_consul_token="s3cret",
                                      walle_scheduler_consul_ca_file="/etc/walle/ca.pem"))
    assert inventory == {"plugin": "walle_consul", "url": "https://10.77.9.1:8501",
                         "token_file": role_vars()["walle_scheduler_consul_token_file"],
                         "ca_file": "/etc/walle/ca.pem"}
    assert set(inventory) <= set(plugin_options())
    assert role_vars()["walle_scheduler_inventory"].endswith("/walle_consul.yml")  # verify_file


def test_no_token_no_ca_means_an_inventory_with_the_address_only():
    assert yaml.safe_load(render("walle_consul.yml.j2")) == {
        "plugin": "walle_consul", "url": role_vars()["walle_scheduler_consul_http_addr"]}


def test_connection_settings_are_group_vars_beside_the_inventory():
    task = role_task("configure.yml", "ansible.builtin.copy", "group_vars/all.yml")
    assert task["ansible.builtin.copy"]["content"] == \
        "{{ walle_scheduler_node_connection | to_nice_yaml }}"
    assert task["ansible.builtin.copy"]["dest"] == \
        "{{ walle_scheduler_inventory | dirname }}/group_vars/all.yml"
