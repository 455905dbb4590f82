"""The consul role's templates rendered with jinja2 from sample walle facts."""

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles/consul"
FACTS = {"cpu": 8, "memory": 16 * 2**30, "disk": 500 * 10**9,
         "gpus": [{"index": 0, "name": "NVIDIA H100"}, {"index": 1, "name": "NVIDIA H100"}],
         "zone": "z1", "rack": "r7", "labels": {"ssd": "true", "team.owner": "ml"},
         "datasets": ["imagenet", "logs"]}


def role_vars(**overrides):
    """defaults/main.yml with the values that Ansible would template made concrete."""
    data = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    data.update(consul_node_name="node1", consul_serf_bind_addr="10.77.0.11",
                consul_walle_node=FACTS)
    data.update(overrides)
    return data


def render(name, **variables):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(name).render(**variables)


def node_meta(**overrides):
    return json.loads(render("node_meta.json.j2", **role_vars(**overrides)))


def test_node_meta_carries_the_facts():
    meta = node_meta()
    assert meta["walle_cpu"] == str(FACTS["cpu"])
    assert meta["walle_memory"] == str(FACTS["memory"])
    assert meta["walle_disk"] == str(FACTS["disk"])
    assert meta["walle_gpus"] == str(len(FACTS["gpus"]))
    assert (meta["walle_zone"], meta["walle_rack"]) == ("z1", "r7")
    assert meta["walle_datasets"].split(",") == FACTS["datasets"]
    assert meta["walle_label_ssd"] == "true"
    assert meta["walle_label_team_owner"] == "ml"  # "." is not allowed in meta keys
    assert all(isinstance(v, str) for v in meta.values())


def test_node_meta_carries_the_port_range_when_set():
    assert "walle_port_range" not in node_meta()
    assert node_meta(consul_walle_port_range="30000-30999")["walle_port_range"] == "30000-30999"


def test_node_meta_respects_consul_limits():
    meta = node_meta(consul_node_meta={"role": "gpu"})
    assert len(meta) <= 64
    for key, value in meta.items():
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", key) and not key.startswith("consul-")
        assert len(value) <= 512
    assert meta["role"] == "gpu"


def test_node_without_optional_facts_has_only_what_it_knows():
    meta = node_meta(consul_walle_node={"cpu": 2, "memory": 1024, "disk": 0, "gpus": []})
    assert meta == {"walle_cpu": "2", "walle_memory": "1024", "walle_disk": "0",
                    "walle_gpus": "0"}


def agent_config(**overrides):
    variables = role_vars(**overrides)
    variables["consul_node_meta_rendered"] = node_meta(**overrides)
    return json.loads(render("consul.json.j2", **variables))


def test_client_agent_config():
    cfg = agent_config(consul_retry_join=["10.0.0.1", "10.0.0.2"])
    assert cfg["server"] is False and "bootstrap_expect" not in cfg
    assert cfg["retry_join"] == ["10.0.0.1", "10.0.0.2"]
    assert cfg["ports"] == {"http": 8500, "dns": 8600}
    assert cfg["node_meta"]["walle_cpu"] == "8"
    assert cfg["node_name"] == "node1" and cfg["datacenter"] == "dc1"
    assert "encrypt" not in cfg and "acl" not in cfg


def test_server_agent_with_encryption_and_acl_token():
    key = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="
    cfg = agent_config(consul_server=True, consul_bootstrap_expect=3, consul_encrypt_key=key,
                       consul_acl_enabled=True, consul_acl_agent_token="agent-tok")
    assert cfg["server"] is True and cfg["bootstrap_expect"] == 3
    assert cfg["encrypt"] == key
    assert cfg["acl"]["enabled"] is True and cfg["acl"]["default_policy"] == "deny"
    assert cfg["acl"]["tokens"] == {"agent": "agent-tok"}


def test_the_agent_token_is_never_the_default_token():
    # The default token is what every local process gets without asking (workloads included):
    # it stays the anonymous token. The node-side Walle token never reaches the agent config.
    cfg = agent_config(consul_acl_enabled=True, consul_acl_agent_token="agent-tok",
                       consul_walle_token="walle-tok")
    tokens = cfg["acl"]["tokens"]
    assert tokens["agent"] == "agent-tok"
    assert "default" not in tokens
    assert "walle-tok" not in json.dumps(cfg)


def test_dns_gets_its_own_token_when_given():
    cfg = agent_config(consul_acl_enabled=True, consul_acl_agent_token="agent-tok",
                       consul_acl_dns_token="dns-tok")
    assert cfg["acl"]["tokens"] == {"agent": "agent-tok", "dns": "dns-tok"}


def test_acl_without_tokens_has_no_tokens_block():
    cfg = agent_config(consul_acl_enabled=True)
    assert "tokens" not in cfg["acl"]


def role_tasks(name):
    return yaml.safe_load((ROLE / "tasks" / name).read_text())


def test_node_side_walle_token_is_a_root_only_file_and_never_logged():
    tasks = {t["name"]: t for t in role_tasks("walle_token.yml")}
    write = next(t for t in tasks.values() if "ansible.builtin.copy" in t
                 and "consul_walle_token " in t["ansible.builtin.copy"]["content"] + " ")
    copy = write["ansible.builtin.copy"]
    assert copy["dest"] == "{{ consul_walle_token_file }}"
    assert (copy["owner"], copy["group"], copy["mode"]) == ("root", "root", "0600")
    assert write["no_log"] is True
    assert "consul_walle_token | length > 0" in write["when"]
    main = role_tasks("main.yml")
    imported = [t for t in main if t.get("ansible.builtin.import_tasks") == "walle_token.yml"]
    assert imported and "when" not in imported[0], "both modes install the token file"
    assert role_vars()["consul_walle_token"] == ""  # unset: no file, no header (the lab)


def test_serf_config_carries_the_same_meta_as_tags():
    cfg = json.loads(render("serf.json.j2", **gossip_vars(consul_mode="standin")))
    assert cfg["node_name"] == "node1"
    assert cfg["bind"] == "10.77.0.11:7946"
    assert cfg["tags"] == node_meta()
    assert cfg["retry_join"] == ["10.77.0.1"]
    assert len(json.dumps(cfg["tags"])) <= 480  # Serf's member metadata is 512 bytes


def test_dns_forwarding_templates():
    resolved = render("resolved-consul.conf.j2", **role_vars())
    assert "DNS=127.0.0.1:8600" in resolved and "Domains=~consul" in resolved
    assert "[Resolve]" in resolved
    dnsmasq = render("dnsmasq-consul.conf.j2", **role_vars(consul_dns_port=8653))
    assert "server=/consul/127.0.0.1#8653" in dnsmasq


UNITS = [("consul.service.j2", "consul.service"), ("walle-serf.service.j2", "walle-serf.service")]


@pytest.mark.parametrize("template,unit", UNITS)
def test_units_render(template, unit):
    text = render(template, **role_vars())
    assert "[Service]" in text and "ExecStart=" in text and "WantedBy=multi-user.target" in text


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("template,unit", UNITS)
def test_units_verify(tmp_path, template, unit):
    # The consul binary is not installed here; point ExecStart at one that exists so verify
    # checks the unit's syntax and directives rather than the binary's presence.
    text = render(template, **role_vars(consul_bin_path=shutil.which("true"),
                                        consul_serf_bin=shutil.which("serf") or "/bin/true",
                                        consul_user="root", consul_group="root"))
    path = tmp_path / unit
    path.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in proc.stderr.splitlines() if unit in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_every_default_is_prefixed_commented_and_in_argument_specs():
    lines = (ROLE / "defaults/main.yml").read_text().splitlines()
    names = []
    for number, line in enumerate(lines):
        match = re.match(r"^([a-z_]+):", line)
        if match:
            names.append(match.group(1))
            assert match.group(1).startswith("consul_"), line
            before = [x for x in lines[max(0, number - 4):number] if x.strip()]
            assert before and (before[-1].startswith("#") or re.match(r"^consul_\w+:", before[-1])
                               and lines[number - 1].strip()), f"{match.group(1)} lacks a comment"
    specs = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(names) == set(options)


@pytest.mark.skipif(os.geteuid() != 0, reason="the token file is owned by root")
def test_token_file_task_writes_0600_and_logs_nothing(tmp_path):
    """The role's walle_token.yml run for real (ansible-runner, local connection): the file
    holds the token, mode 0600, and no event or artifact of the run contains the token."""
    import ansible_runner

    from walle.adapters import runner

    token = "7c0ffee0-node-side-walle-token"
    dest = tmp_path / "etc/walle/consul-token"
    project = tmp_path / "project"
    project.mkdir()
    # the token as inventory or vault vars would give it: a variable of the play
    (project / "play.yml").write_text(yaml.safe_dump([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"consul_walle_token": token, "consul_walle_token_file": str(dest)},
        "tasks": [{"ansible.builtin.include_role": {"name": "walle.pool.consul",
                                                    "tasks_from": "walle_token.yml"}}]}]))
    private = tmp_path / "runner"
    private.mkdir()
    kwargs = runner.runner_args("play.yml", {"all": {"hosts": {}}}, {}, ["localhost"],
                                str(private), project)
    events: list = []
    result = ansible_runner.run(**kwargs, event_handler=lambda e: events.append(e) or True,
                                timeout=120)
    assert result.rc == 0, result.stdout.read()
    assert dest.read_text() == token + "\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600 and dest.stat().st_uid == 0
    assert token not in json.dumps(events)
    assert token not in result.stdout.read()
    artifacts = [p for p in private.rglob("*") if p.is_file()]
    assert artifacts and not [p for p in artifacts if token.encode() in p.read_bytes()]


def gossip_vars(**overrides):
    """role_vars plus vars/main.yml, with its one templated value made concrete."""
    variables = role_vars(**overrides)
    variables.update(yaml.safe_load((ROLE / "vars/main.yml").read_text()))
    variables["consul_gossip_key"] = "/".join(str(variables[f"consul_gossip_{k}"]) for k in
                                              ("probe_interval", "probe_timeout",
                                               "suspicion_mult"))
    variables["consul_node_meta_rendered"] = node_meta(**overrides)
    return variables


def test_gossip_lan_is_tuned_for_a_lan_and_serf_runs_the_same_timings():
    from walle.lab.nodes import SERF_PROFILE
    cfg = json.loads(render("consul.json.j2", **gossip_vars()))
    assert cfg["gossip_lan"] == {"probe_interval": "1s", "probe_timeout": "200ms",
                                 "suspicion_mult": 3}
    serf = json.loads(render("serf.json.j2", **gossip_vars(consul_mode="standin")))
    assert serf["profile"] == "local" == SERF_PROFILE  # memberlist's local: 1s/200ms/3
    lan = gossip_vars(consul_gossip_probe_timeout="500ms", consul_gossip_suspicion_mult=4)
    assert json.loads(render("serf.json.j2", **lan))["profile"] == "lan"


def test_gossip_timings_serf_cannot_run_are_refused_in_standin_mode():
    asserts = yaml.safe_load((ROLE / "tasks/asserts.yml").read_text())
    gossip = next(t for t in asserts if "Serf profile" in t["name"])
    assert gossip["ansible.builtin.assert"]["that"] == ["consul_gossip_key in consul_serf_profiles"]
    assert gossip["when"] == "consul_mode == 'standin'"
    assert "500ms/2" not in gossip_vars(consul_gossip_suspicion_mult=2)["consul_serf_profiles"]
