"""Spec -> module arguments: tables of specs and the arguments each must produce."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from walle.jobspec import parse_spec
from walle.jobspec.model import (
    Discovery,
    HealthCheck,
    JobSpec,
    Range,
    Resources,
    Runtime,
    StopPolicy,
)
from walle.service import params

GIB = 1024**3


@dataclass(frozen=True)
class Grant:
    cpu_weight: int = 200
    cpu_quota_percent: int | None = 150
    memory_min: int = GIB
    memory_high: int | None = 2 * GIB
    memory_max: int | None = 3 * GIB


def make_spec(**overrides) -> JobSpec:
    base = dict(
        name="web-api",
        kind="service",
        count=3,
        resources=Resources(cpu=Range(0.5, 1.5), memory=Range(GIB, 3 * GIB), io_weight=300,
                            tasks_max=64),
        runtime=Runtime(kind="exec", command="/usr/bin/python3",
                        args=("-m", "http.server", "8080"), env=(("MODE", "prod"),)),
        service=Discovery(name="web", port=8080, tags=("v1", "public")),
        health=HealthCheck(type="http", path="/healthz", interval=1.0, timeout=0.5,
                           deregister_after=90.0),
        stop=StopPolicy(signal="SIGINT", timeout=12.0, pre_stop=("/bin/touch", "/tmp/drain")),
        restart="always",
    )
    base.update(overrides)
    return JobSpec(**base)


def test_slice_carries_the_grant_and_the_spec_limits():
    args = params.instance_vars(make_spec(), 2, "10.77.1.11", Grant())["slice"]
    assert args == {
        "name": "walle-web_api-2.slice",
        "state": "present",
        "description": "walle web-api slot 2",
        "cpu_weight": 200,
        "cpu_quota": 150,
        "memory_min": GIB,
        "memory_high": 2 * GIB,
        "memory_max": 3 * GIB,
        "io_weight": 300,
        "tasks_max": 64,
    }


def test_unset_grant_ceilings_and_tasks_max_are_left_to_the_module_defaults():
    spec = make_spec(resources=Resources(cpu=Range(1, 1), memory=Range(GIB, GIB)))
    grant = Grant(cpu_quota_percent=None, memory_high=None, memory_max=None)
    args = params.slice_args(spec, 0, grant)
    for key in ("cpu_quota", "memory_high", "memory_max", "tasks_max", "device_policy"):
        assert key not in args


@pytest.mark.parametrize(
    ("gpus", "indices", "expected"),
    [
        (1, None, ["char-nvidia rw", "/dev/nvidiactl rw", "char-nvidia-uvm rw"]),
        (2, [3, 1], ["/dev/nvidia1 rw", "/dev/nvidia3 rw", "/dev/nvidiactl rw",
                     "char-nvidia-uvm rw"]),
    ],
)
def test_gpu_jobs_get_a_closed_device_policy_with_the_gpus_allowed(gpus, indices, expected):
    spec = make_spec(resources=Resources(cpu=Range(1, 1), memory=Range(GIB, GIB), gpus=gpus))
    out = params.instance_vars(spec, 0, "10.77.1.11", Grant(), gpu_indices=indices)
    assert out["slice"]["device_policy"] == "closed"
    assert out["slice"]["device_allow"] == expected
    if indices:
        env = out["workload"]["env"]
        assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == "1,3"
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # indices are /dev/nvidia<i> minors


def test_gpu_indices_must_match_the_gpu_count():
    spec = make_spec(resources=Resources(cpu=Range(1, 1), memory=Range(GIB, GIB), gpus=2))
    with pytest.raises(ValueError, match="gpu_indices"):
        params.slice_args(spec, 0, Grant(), gpu_indices=[0])


def test_service_workload_arguments():
    spec = make_spec()
    args = params.instance_vars(spec, 1, "10.77.1.11", Grant())["workload"]
    assert args == {
        "name": "walle-web_api-1",
        "slice": "walle-web_api-1.slice",
        "state": "started",
        "kind": "service",
        "runtime": "exec",
        "command": "/usr/bin/python3",
        "args": ["-m", "http.server", "8080"],
        "env": {"WALLE_JOB": "web-api", "WALLE_SLOT": "1", "WALLE_PORT": "8080",
                "MODE": "prod"},
        "stop_signal": "SIGINT",
        "stop_timeout": 12.0,
        "pre_stop": ["/bin/touch", "/tmp/drain"],
        "restart": "always",
        "description": f"walle web-api slot 1 runtime {spec.runtime_digest()}",
    }


@pytest.mark.parametrize(
    ("kind", "extra", "present", "absent"),
    [
        ("batch", {"retries": 5}, {"restart": "on-failure", "retries": 5}, ("schedule",)),
        ("cron", {"schedule": "*:0/5", "retries": 2}, {"schedule": "*:0/5", "retries": 2},
         ("restart", "concurrency")),
        ("cron", {"schedule": "*:0/5", "concurrency": "replace"},
         {"retries": 3, "concurrency": "replace"}, ("restart", "max_runs")),
        ("cron", {"schedule": "*:0/5", "concurrency": "allow", "max_runs": 4},
         {"concurrency": "allow", "max_runs": 4}, ("restart",)),
    ],
)
def test_batch_and_cron_workloads(kind, extra, present, absent):
    spec = make_spec(kind=kind, service=None, health=None, **extra)
    args = params.workload_args(spec, 0)
    assert args["kind"] == kind
    assert {k: args[k] for k in present} == present
    assert all(k not in args for k in absent)


@pytest.mark.parametrize(
    ("kind", "schedule", "wait_unit"),
    [("service", None, "walle-web_api-0.service"), ("cron", "daily", "walle-web_api-0.timer"),
     ("batch", None, None)],
)
def test_instance_identity_names_the_unit_to_wait_for(kind, schedule, wait_unit):
    spec = make_spec(kind=kind, schedule=schedule)
    ident = params.instance_identity(spec, 0)
    assert ident["wait_unit"] == wait_unit
    assert ident["id"] == "web-api-0"
    assert ident["digest"] == spec.digest()


DIGEST = "sha256:" + "ab" * 32


def test_nspawn_runtime_runs_the_resolved_image_from_the_node_cache():
    spec = make_spec(runtime=Runtime(kind="nspawn", image="web:1.0"))
    image = params.image_args(DIGEST, "/store/blobs/sha256-abab.tar.gz")
    out = params.instance_vars(spec, 0, "10.77.0.2", Grant(), image=image)
    args = out["workload"]
    assert args["runtime"] == "nspawn"
    # the unit runs the digest's directory of the node cache, never the spec's text
    assert args["image"] == "sha256-" + "ab" * 32
    assert out["image"] == {"digest": DIGEST, "dir": args["image"],
                            "src": "/store/blobs/sha256-abab.tar.gz"}
    assert "command" not in args and "user" not in args and args["args"] == []


def test_an_image_job_needs_its_resolved_image_and_only_it_has_one():
    with pytest.raises(ValueError, match="runtime.image"):
        params.instance_vars(make_spec(runtime=Runtime(kind="nspawn", image="web:1.0")), 0,
                             "10.77.0.2", Grant())
    with pytest.raises(ValueError, match="runtime.image"):
        params.instance_vars(make_spec(), 0, "10.77.0.2", Grant(),
                             image=params.image_args(DIGEST, "/x"))


def test_spec_env_wins_over_walle_defaults():
    spec = make_spec(runtime=Runtime(kind="exec", command="/bin/true",
                                     env=(("WALLE_PORT", "9999"),)))
    assert params.workload_args(spec, 0)["env"]["WALLE_PORT"] == "9999"


def test_only_a_runtime_change_changes_the_unit_description():
    spec = make_spec()
    resized = dataclasses.replace(
        spec, resources=Resources(cpu=Range(2, 4), memory=Range(GIB, 4 * GIB)))
    changed = dataclasses.replace(spec, runtime=Runtime(kind="exec", command="/bin/false"))
    desc = params.workload_args(spec, 0)["description"]
    assert params.workload_args(resized, 0)["description"] == desc
    assert params.workload_args(changed, 0)["description"] != desc


def test_service_registration_uses_the_node_address():
    spec = make_spec()
    args = params.instance_vars(spec, 2, "10.77.1.12", Grant(), "http://10.77.1.1:8500")
    assert args["service"] == {
        "service_id": "web-api-2",
        "name": "web",
        "address": "10.77.1.12",
        "port": 8080,
        "tags": ["v1", "public"],
        "meta": {"walle_job": "web-api", "walle_slot": "2", "walle_digest": spec.digest(),
                 "walle_runtime": spec.runtime_digest()},
        "consul_addr": "http://10.77.1.1:8500",
        "state": "present",
        "check_type": "http",
        "check_http": "http://10.77.1.12:8080/healthz",
        "check_interval": "1s",
        "check_timeout": "500ms",  # the node grammar's format, as every duration
        "deregister_critical_after": "90s",
    }


CHECK_KEYS = ("check_type", "check_http", "check_tcp", "check_ttl", "check_interval",
              "check_timeout", "deregister_critical_after")


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        (HealthCheck(type="tcp", port=9000),
         {"check_type": "tcp", "check_tcp": "10.77.1.12:9000", "check_interval": "2s",
          "check_timeout": "2s"}),
        (HealthCheck(type="tcp"),
         {"check_type": "tcp", "check_tcp": "10.77.1.12:8080", "check_interval": "2s",
          "check_timeout": "2s"}),
        (HealthCheck(type="ttl", ttl=15.0), {"check_type": "ttl", "check_ttl": "15s"}),
    ],
)
def test_check_types(health, expected):
    args = params.service_args(make_spec(health=health), 0, "10.77.1.12")
    assert {k: args[k] for k in CHECK_KEYS if k in args} == {
        **expected, "deregister_critical_after": "60s"}


def test_ipv6_node_address_is_bracketed_in_check_urls():
    args = params.service_args(make_spec(), 0, "fd00::5")
    assert args["check_http"] == "http://[fd00::5]:8080/healthz"


def test_no_service_means_no_registration_and_no_health_means_no_check():
    assert params.instance_vars(make_spec(service=None), 0, "10.77.1.11", Grant())[
        "service"] is None
    args = params.service_args(make_spec(health=None), 0, "10.77.1.11")
    assert not any(k in args for k in CHECK_KEYS)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"health": HealthCheck(type="ttl")}, "health.ttl"),
        ({"service": Discovery(name="web")}, "health.port"),
    ],
)
def test_incomplete_checks_are_refused_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        params.service_args(make_spec(**overrides), 0, "10.77.1.11")


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "localhost", "0.0.0.0"])
def test_loopback_node_addresses_are_refused(address):
    with pytest.raises(ValueError, match="node_address"):
        params.instance_vars(make_spec(), 0, address, Grant())


@pytest.mark.parametrize("slot", [-1, 3, True, "0"])
def test_slots_outside_the_job_are_refused(slot):
    with pytest.raises(ValueError, match="slot"):
        params.instance_vars(make_spec(), slot, "10.77.1.11", Grant())


def test_stop_vars_name_everything_to_remove():
    out = params.stop_vars("web-api", 4, "http://10.77.1.1:8500")
    assert out == {
        "instance": {"id": "web-api-4", "job": "web-api", "slot": 4, "unit": "walle-web_api-4"},
        "slice": {"name": "walle-web_api-4.slice", "state": "absent"},
        "workload": {"name": "walle-web_api-4", "state": "absent"},
        "service": {"service_id": "web-api-4", "state": "absent",
                    "consul_addr": "http://10.77.1.1:8500"},
        "drain": params.DEFAULT_DRAIN_S,  # seconds out of the pool before the stop signal
    }


def test_the_drain_is_the_jobs_stop_drain_or_the_default():
    spec = parse_spec({"name": "web", "kind": "service",
                       "resources": {"cpu": "0.1", "memory": "32M"},
                       "runtime": {"command": "/bin/true"}, "stop": {"drain": "750ms"}})
    assert params.drain_of(spec) == 0.75
    assert params.drain_of(None) == params.DEFAULT_DRAIN_S  # a job stopped (no spec left)
    assert params.stop_vars("web", 0, drain=0.75)["drain"] == 0.75


# ----------------------------------------------------------------------------- ACL token and CA

AUTH = params.consul_auth(token_file="/etc/walle/consul-token",
                          ca_file="/etc/walle/consul-ca.pem")


def test_consul_auth_names_paths_on_the_node_never_a_token():
    assert AUTH == {"token_file": "/etc/walle/consul-token",
                    "ca_path": "/etc/walle/consul-ca.pem"}
    assert params.consul_auth() == {} and params.consul_auth("", "") == {}


@pytest.mark.parametrize(("kwargs", "field"), [({"token_file": "consul-token"}, "token_file"),
                                               ({"ca_file": "ca.pem"}, "ca_file")])
def test_consul_auth_paths_must_be_absolute(kwargs, field):
    with pytest.raises(ValueError, match=field):
        params.consul_auth(**kwargs)


def test_registration_and_deregistration_carry_the_auth_options():
    placed = params.instance_vars(make_spec(), 0, "10.77.1.12", Grant(), "https://127.0.0.1:8501",
                                  consul_auth=AUTH)
    assert placed["service"]["token_file"] == "/etc/walle/consul-token"
    assert placed["service"]["ca_path"] == "/etc/walle/consul-ca.pem"
    assert placed["service"]["consul_addr"] == "https://127.0.0.1:8501"
    stopped = params.stop_vars("web-api", 0, "https://127.0.0.1:8501", consul_auth=AUTH)
    assert stopped["service"] == {"service_id": "web-api-0", "state": "absent",
                                  "consul_addr": "https://127.0.0.1:8501", **AUTH}
    plain = params.instance_vars(make_spec(), 0, "10.77.1.12", Grant())
    assert not {"token", "token_file", "ca_path"} & set(plain["service"])


# ----------------------------------------------------------------------- the sandbox

def test_a_plain_job_asks_for_no_privilege():
    args = params.workload_args(make_spec(), 0)
    assert not {"privileged", "capabilities", "write_execute", "device_allow",
                "credentials"} & set(args)


def test_privilege_capabilities_and_jit_reach_the_workload():
    rt = Runtime(kind="exec", command="/usr/bin/java", privileged=False, jit=True,
                 capabilities=("CAP_NET_BIND_SERVICE",))
    args = params.workload_args(make_spec(runtime=rt), 0)
    assert args["capabilities"] == ["CAP_NET_BIND_SERVICE"] and args["write_execute"] is True
    rt = Runtime(kind="exec", command="/bin/app", privileged=True, user="root")
    args = params.workload_args(make_spec(runtime=rt), 0)
    assert args["privileged"] is True and args["user"] == "root"


def test_gpu_jobs_get_the_slices_device_list_in_their_sandbox():
    spec = make_spec(resources=Resources(cpu=Range(1, 1), memory=Range(GIB, GIB), gpus=1))
    out = params.instance_vars(spec, 0, "10.77.1.11", Grant(), gpu_indices=[3])
    assert out["workload"]["device_allow"] == out["slice"]["device_allow"]
