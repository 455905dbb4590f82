"""The node-side Consul token and CA reach walle_consul_service as paths on the node: from
`walle scheduler run`'s flags through SchedulerConfig and the executor into the playbook
variables, which never hold a token (ansible-runner writes them to its artifacts)."""

from __future__ import annotations

import json

import pytest

from walle.adapters.runner import HostResult, RunResult
from walle.cli.main import build_parser
from walle.cli.scheduler import scheduler_config
from walle.core import Allocation
from walle.core.grants import grant_alone
from walle.core.model import Capacity
from walle.jobspec.parse import parse_spec
from walle.service.executor import Executor

SPEC = parse_spec({"name": "web", "kind": "service", "count": 1,
                   "resources": {"cpu": 0.5, "memory": "64M"},
                   "runtime": {"command": "/usr/bin/python3", "args": ["-m", "http.server"]},
                   "service": {"port": 8080}, "health": {"type": "tcp"}})
BASE = ["scheduler", "run", "--inventory", "/etc/walle/inventory.yml"]


class RecordingRunner:
    def __init__(self):
        self.extravars = []

    def __call__(self, playbook, inventory, extravars, limit, timeout=None):
        self.extravars.append(extravars)
        hosts = {h: HostResult(h, ok=True, done=True) for h in limit}
        return RunResult("successful", 0, hosts, 0.1)


def test_flags_become_the_module_options_in_the_scheduler_config():
    args = build_parser().parse_args(BASE + ["--node-consul-addr", "https://127.0.0.1:8501",
                                             "--node-consul-token-file", "/etc/walle/consul-token",
                                             "--node-consul-ca-file", "/etc/walle/ca.pem"])
    config = scheduler_config(args)
    assert config.node_consul_addr == "https://127.0.0.1:8501"
    assert config.node_consul_auth == {"token_file": "/etc/walle/consul-token",
                                       "ca_path": "/etc/walle/ca.pem"}


def test_empty_flags_mean_no_token_and_no_ca():
    # systemd passes an unset ${WALLE_NODE_CONSUL_TOKEN_FILE} as one empty argument
    args = build_parser().parse_args(BASE + ["--node-consul-token-file", "",
                                             "--node-consul-ca-file", ""])
    assert scheduler_config(args).node_consul_auth == {}
    assert scheduler_config(build_parser().parse_args(BASE)).node_consul_auth == {}


def test_a_relative_node_path_is_refused_naming_the_flag():
    args = build_parser().parse_args(BASE + ["--node-consul-token-file", "consul-token"])
    with pytest.raises(ValueError, match="token_file"):
        scheduler_config(args)


def test_place_and_stop_runs_carry_the_paths_not_a_token():
    runner = RecordingRunner()
    auth = {"token_file": "/etc/walle/consul-token", "ca_path": "/etc/walle/ca.pem"}
    executor = Executor({}, "https://127.0.0.1:8501", runner=runner, node_consul_auth=auth)
    alloc = Allocation(job="web", slot=0, node="node1", reserved=Capacity(),
                       ceiling=Capacity(), spec_digest=SPEC.digest(),
                       runtime_digest=SPEC.runtime_digest())
    assert executor.place([(alloc, SPEC)], {"node1": "10.77.1.11"})["web-0"].ok
    assert executor.stop([alloc])["web-0"].ok
    placed, stopped = (ev["walle_batch"]["node1"][0]["service"] for ev in runner.extravars)
    for service in (placed, stopped):
        assert service["token_file"] == "/etc/walle/consul-token"
        assert service["ca_path"] == "/etc/walle/ca.pem"
        assert service["consul_addr"] == "https://127.0.0.1:8501"
        assert "token" not in service
    assert grant_alone(SPEC.resources)  # the spec is schedulable as written
    assert "X-Consul-Token" not in json.dumps(runner.extravars)


def test_a_batch_placement_tells_the_node_where_to_commit_with_the_same_paths():
    """walle-batch-commit on the node writes walle/done/<job>/<slot> with the node's token
    file (a path: no token in the run) and the placement it ran (the leader compares it)."""
    runner = RecordingRunner()
    auth = {"token_file": "/etc/walle/consul-token", "ca_path": "/etc/walle/ca.pem"}
    executor = Executor({}, "https://127.0.0.1:8501", runner=runner, node_consul_auth=auth)
    batch = parse_spec({"name": "etl", "kind": "batch", "count": 1,
                        "resources": {"cpu": 0.1, "memory": "16M"},
                        "runtime": {"command": "/bin/true"}})
    alloc = Allocation(job="etl", slot=0, node="node1", reserved=Capacity(),
                       ceiling=Capacity(), spec_digest=batch.digest(),
                       runtime_digest=batch.runtime_digest(), since=1234.5)
    assert executor.place([(alloc, batch)], {"node1": "10.77.1.11"})["etl-0"].ok
    commit = runner.extravars[0]["walle_batch"]["node1"][0]["workload"]["commit"]
    assert commit == {"consul_addr": "https://127.0.0.1:8501", "key": "walle/done/etl/0",
                      "node": "node1", "attempt": "1234.500000", **auth}
    executor.place([(alloc, SPEC)], {"node1": "10.77.1.11"})  # a service commits nothing
    assert "commit" not in runner.extravars[1]["walle_batch"]["node1"][0]["workload"]


def test_a_gpu_instance_gets_exactly_the_gpus_the_core_gave_it_at_placement_and_regrant():
    """Before the core assigned indices, a 1-GPU instance's slice allowed every GPU of the
    node (`char-nvidia`)."""
    runner = RecordingRunner()
    executor = Executor({}, "http://127.0.0.1:8500", runner=runner)
    gpu = parse_spec({"name": "train", "kind": "service", "count": 1,
                      "resources": {"cpu": 1, "memory": "1G", "gpus": 1},
                      "runtime": {"command": "/usr/bin/python3"}})
    alloc = Allocation(job="train", slot=0, node="node1", reserved=Capacity(gpus=1),
                       ceiling=Capacity(gpus=1), spec_digest=gpu.digest(),
                       runtime_digest=gpu.runtime_digest(), gpu_indices=(1,))
    assert executor.place([(alloc, gpu)], {"node1": "10.77.1.11"})["train-0"].ok
    assert executor.regrant([(alloc, gpu)])["train-0"].ok
    placed, regranted = (ev["walle_batch"]["node1"][0] for ev in runner.extravars)
    for instance in (placed, regranted):
        assert instance["slice"]["device_allow"][0] == "/dev/nvidia1 rw"
        assert "char-nvidia rw" not in instance["slice"]["device_allow"]
    assert placed["workload"]["env"]["CUDA_VISIBLE_DEVICES"] == "1"
