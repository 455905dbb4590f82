"""The cluster privilege policy and job secrets, where the leader places (service/executor.py):
refusals name the reason and reach no node; secret values ride only in the workload's
`credentials`, are read from their sources at placement time and never appear in errors."""

from __future__ import annotations

import copy

import pytest

from walle.core.model import Allocation, Capacity
from walle.jobspec import parse_spec, spec_to_data
from walle.service.executor import Executor
from walle.service.policy import PrivilegePolicy
from walle.service.secrets import SecretReader

SECRET = "hunter2-\u00e9-value"
BASE = {"name": "web", "kind": "service", "resources": {"cpu": 0.1, "memory": "32M"},
        "runtime": {"type": "exec", "command": "/usr/bin/python3"}}


def spec(runtime=None, **top):
    data = copy.deepcopy(BASE)
    data["runtime"].update(runtime or {})
    data.update(top)
    return parse_spec(data)


class RecordingRunner:
    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, playbook, inventory, extravars, limit, *, timeout=None):
        from walle.adapters.runner import HostResult, RunResult
        self.calls.append(copy.deepcopy(extravars))
        return RunResult("successful", 0, {h: HostResult(h, ok=True, done=True) for h in limit},
                         0.1)


class FakeKv:
    def __init__(self, data):
        self.data = data
        self.asked: list[str] = []

    def get(self, key):
        self.asked.append(key)
        value = self.data.get(key)
        return 1, None if value is None else {"Key": key, "Value": value}


class FakeApi:
    def __init__(self, data):
        self.client = type("Client", (), {"kv": FakeKv(data)})()

    def call(self, _what, fn):
        return fn()


def alloc(job="web", slot=0):
    zero = Capacity(cpu=0.1, memory=1 << 25)
    return Allocation(job=job, slot=slot, node="node1", reserved=zero, ceiling=zero,
                      spec_digest="d", runtime_digest="r")


def place(executor, *specs):
    return executor.place([(alloc(s.name), s) for s in specs], {"node1": "10.77.1.11"})


# ------------------------------------------------------------------------------ policy

@pytest.mark.parametrize(("runtime", "policy", "fragment"), [
    ({"privileged": True, "user": "root"}, PrivilegePolicy(), "runtime.privileged is not allowed"),
    ({"privileged": True}, PrivilegePolicy.of(False, ["CAP_NET_RAW"]), "--allow-privileged"),
    ({"capabilities": ["CAP_NET_BIND_SERVICE"]}, PrivilegePolicy(),
     "CAP_NET_BIND_SERVICE not allowed"),
    ({"capabilities": ["CAP_NET_RAW", "CAP_NET_BIND_SERVICE"]},
     PrivilegePolicy.of(False, ["CAP_NET_BIND_SERVICE"]), "CAP_NET_RAW not allowed"),
])
def test_privilege_the_policy_denies_is_refused_before_any_playbook(runtime, policy, fragment):
    runner = RecordingRunner()
    outcomes = place(Executor({}, "http://127.0.0.1:8500", runner=runner, policy=policy),
                     spec(runtime))
    assert not outcomes["web-0"].ok and fragment in outcomes["web-0"].error
    assert runner.calls == []


def test_privilege_the_policy_allows_is_placed_with_it():
    runner = RecordingRunner()
    policy = PrivilegePolicy.of(True, ["CAP_NET_BIND_SERVICE"])
    executor = Executor({}, "http://127.0.0.1:8500", runner=runner, policy=policy)
    outcomes = place(executor, spec({"privileged": True, "user": "root"}, name="root-job"),
                     spec({"capabilities": ["CAP_NET_BIND_SERVICE"]}, name="bind"))
    assert all(o.ok for o in outcomes.values())
    (batch,) = [c["walle_batch"]["node1"] for c in runner.calls]
    assert batch[0]["workload"]["privileged"] is True and batch[0]["workload"]["user"] == "root"
    assert batch[1]["workload"]["capabilities"] == ["CAP_NET_BIND_SERVICE"]


def test_one_refused_job_does_not_stop_the_others_in_its_batch():
    runner = RecordingRunner()
    outcomes = place(Executor({}, "x", runner=runner),
                     spec({"privileged": True}, name="bad"), spec(name="good"))
    assert not outcomes["bad-0"].ok and outcomes["good-0"].ok
    assert [i["instance"]["id"] for i in runner.calls[0]["walle_batch"]["node1"]] == ["good-0"]


# ----------------------------------------------------------------------------- secrets

def test_secrets_are_read_at_placement_and_ride_only_in_the_workload(tmp_path):
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "tls.key").write_text("KEY-" + SECRET)
    api = FakeApi({"walle/secrets/app/db": SECRET.encode()})
    runner = RecordingRunner()
    job = spec(secrets={"db": {"consul": "app/db"}, "tls.key": {"file": "web/tls.key"}})
    executor = Executor({}, "x", runner=runner, secrets=SecretReader(api, str(tmp_path)))
    assert place(executor, job)["web-0"].ok
    (call,) = runner.calls
    assert call["walle_credentials"] == {"web-0": {"db": SECRET, "tls.key": "KEY-" + SECRET}}
    assert api.client.kv.asked == ["walle/secrets/app/db"]
    assert SECRET not in repr(call["walle_batch"])  # the loop items carry no value
    # the job as stored holds the references only
    assert SECRET not in repr(spec_to_data(job)) and SECRET not in repr(job.to_dict())


@pytest.mark.parametrize(("secrets", "fragment"), [
    ({"db": {"consul": "app/missing"}}, "walle/secrets/app/missing does not exist"),
    ({"db": {"file": "nope"}}, "cannot be read"),
    ({"db": {"file": "escape/passwd"}}, "leads outside the secrets directory"),
    ({"db": {"file": "fifo"}}, "not a regular file"),
])
def test_an_unreadable_secret_refuses_the_instance_naming_it(tmp_path, secrets, fragment):
    import os
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text(SECRET)
    store = tmp_path / "store"
    store.mkdir()
    (store / "escape").symlink_to(outside)
    os.mkfifo(store / "fifo")
    runner = RecordingRunner()
    executor = Executor({}, "x", runner=runner,
                        secrets=SecretReader(FakeApi({}), str(store)))
    outcome = place(executor, spec(secrets=secrets))["web-0"]
    assert not outcome.ok and fragment in outcome.error and "secrets.db" in outcome.error
    assert SECRET not in outcome.error and runner.calls == []
