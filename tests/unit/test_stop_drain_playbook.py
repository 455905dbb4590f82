"""No request cut: the real stop.yml and place.yml take an instance out of the pool (Consul
deregistration, which DNS and HAProxy follow) and wait its drain BEFORE the stop signal or an
in-place restart.

Runs the playbooks through the runner adapter on a local connection with stand-in
walle_consul_service / walle_workload / walle_slice modules that append each call (module,
instance, state, time) to a log, so the order and the wait between calls can be read back."""

from __future__ import annotations

import json
import sys

import pytest

from walle.adapters import runner
from walle.service.params import leave_args, stop_vars

# A stand-in module: logs the call. walle_consul_service fails for a service id listed in
# `fail_ids`, and says changed only for ids not in `absent_ids` (nothing registered there).
LOG_MODULE = """#!/usr/bin/python3
# WANT_JSON
import json, os, sys, time
args = json.load(open(sys.argv[1]))
module = os.path.basename(__file__).split(".")[0].removeprefix("AnsiballZ_")
who = args.get("service_id") or args.get("name")
with open(os.environ["WALLE_TEST_CALLS"], "a") as f:
    f.write(json.dumps({"module": module, "who": who, "state": args.get("state"),
                        "t": time.monotonic()}) + "\\n")
fail = who in os.environ.get("WALLE_TEST_FAIL_IDS", "").split(",")
changed = who not in os.environ.get("WALLE_TEST_ABSENT_IDS", "").split(",")
print(json.dumps({"changed": changed, "failed": fail, "active_state": "active",
                  "msg": "consul unreachable" if fail else "ok"}))
"""


@pytest.fixture
def calls(tmp_path, monkeypatch):
    """The log of module calls; stand-in modules in a walle.pool collection."""
    log = tmp_path / "calls.jsonl"
    library = tmp_path / "collections" / "ansible_collections" / "walle" / "pool" / "plugins"
    library = library / "modules"
    library.mkdir(parents=True)
    for name in ("walle_slice", "walle_workload", "walle_consul_service", "walle_image"):
        (library / f"{name}.py").write_text(LOG_MODULE)
    env = {**runner.ansible_env(), "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections"),
           "WALLE_TEST_CALLS": str(log)}
    monkeypatch.setattr(runner, "ansible_env", lambda: env)
    monkeypatch.setenv("WALLE_TEST_CALLS", str(log))

    def read() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() \
            else []
    return read


def run(playbook: str, batch: list[dict], **extra) -> runner.RunResult:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    return runner.run_playbook(playbook, {"all": {"hosts": {"n1": local}}},
                               {"walle_batch": {"n1": batch}, "walle_register": True, **extra},
                               ["n1"], timeout=180)


def stopping(job: str, slot: int, drain: float) -> dict:
    return stop_vars(job, slot, "http://127.0.0.1:8500", drain=drain)


def placing(**extra) -> dict:
    """place.yml's instance (instance_vars' shape) with a registration; `leave`: in place."""
    return {"instance": {"id": "web-0", "job": "web", "slot": 0, "unit": "walle-web-0",
                         "wait_unit": None, "digest": "d"},
            "slice": {"name": "walle-web-0.slice"}, "workload": {"name": "walle-web-0"},
            "service": {"service_id": "web-0", "state": "present"}, **extra}


def test_stop_leaves_the_pool_and_drains_before_any_stop_signal(calls):
    result = run("stop.yml", [stopping("web", 0, 1.5), stopping("web", 1, 0.5)])
    assert result.status == "successful", result.output_tail
    log = calls()
    order = [(c["module"], c["who"]) for c in log]
    # both leave first, then each is stopped (walle_workload state=absent sends the signal)
    assert order[:2] == [("walle_consul_service", "web-0"), ("walle_consul_service", "web-1")]
    assert ("walle_workload", "walle-web-0") in order[2:]
    left = max(c["t"] for c in log if c["module"] == "walle_consul_service")
    signalled = min(c["t"] for c in log if c["module"] == "walle_workload")
    assert signalled - left >= 1.5  # the longest drain of the host's instances


def test_an_instance_that_cannot_leave_the_pool_is_not_stopped(calls, monkeypatch):
    monkeypatch.setenv("WALLE_TEST_FAIL_IDS", "web-1")
    result = run("stop.yml", [stopping("web", 0, 0), stopping("web", 1, 0)])
    assert "web-1" in result.hosts["n1"].failed_instances
    assert "web-0" not in result.hosts["n1"].failed_instances
    stopped = [c["who"] for c in calls() if c["module"] == "walle_workload"]
    assert stopped == ["walle-web-0"]  # web-1 still serves, and is still registered


def test_place_in_place_leaves_the_pool_and_drains_before_the_restart(calls):
    instance = placing(leave=leave_args("web", 0, "http://127.0.0.1:8500", drain=1.5))
    result = run("place.yml", [instance])
    assert result.status == "successful", result.output_tail
    assert not result.hosts["n1"].failed_instances
    log = [c for c in calls() if c["module"] != "walle_slice"]
    assert [(c["module"], c["state"]) for c in log] == [
        ("walle_consul_service", "absent"), ("walle_workload", None),
        ("walle_consul_service", "present")]
    assert log[1]["t"] - log[0]["t"] >= 1.5


def test_place_of_a_new_instance_does_not_drain(calls):
    instance = placing()
    result = run("place.yml", [instance])
    assert result.status == "successful", result.output_tail
    assert [(c["module"], c["state"]) for c in calls() if c["module"] != "walle_slice"] == [
        ("walle_workload", None), ("walle_consul_service", "present")]

