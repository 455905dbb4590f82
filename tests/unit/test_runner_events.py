"""The runner adapter's pure parts: event folding, failure messages, runner arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from walle.adapters import runner
from walle.adapters.runner import EventCollector, HostResult, TaskFailure


def ev(kind: str, host: str | None = None, task: str = "t", res: dict | None = None, **extra):
    data = {"host": host, "task": task, "res": res or {}, **extra}
    return {"event": kind, "event_data": data}


def stats(**counters) -> dict:
    return {"event": "playbook_on_stats", "event_data": counters}


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, bool, bool]] = []

    def __call__(self, host: str, result: HostResult) -> None:
        self.calls.append((host, result.ok, result.unreachable))


def test_a_host_is_done_at_its_done_task_before_the_run_ends():
    rec = Recorder()
    c = EventCollector(["n1", "n2"], rec)
    c.handle(ev("runner_on_ok", "n1", "Slice", {"changed": True}))
    c.handle(ev("runner_on_ok", "n1", runner.HOST_DONE_TASK))
    assert rec.calls == [("n1", True, False)]
    assert c.hosts["n1"].changed and c.hosts["n1"].done
    assert not c.hosts["n2"].done


def test_unreachable_host_is_done_at_once_and_others_carry_on():
    rec = Recorder()
    c = EventCollector(["n1", "n2"], rec)
    c.handle(ev("runner_on_unreachable", "n2", "Slice", {"msg": "ssh: connect timed out"}))
    c.handle(ev("runner_on_ok", "n1", runner.HOST_DONE_TASK))
    c.handle(stats(ok={"n1": 3}, dark={"n2": 1}))
    assert rec.calls == [("n2", False, True), ("n1", True, False)]
    assert c.hosts["n2"].failed_tasks == [TaskFailure("Slice", "ssh: connect timed out")]


def test_unrescued_failure_finishes_the_host_at_the_stats():
    rec = Recorder()
    c = EventCollector(["n1"], rec)
    c.handle(ev("runner_on_failed", "n1", "Workload", {"msg": "cpu_weight: out of range"}))
    assert rec.calls == []  # could still be rescued
    c.handle(stats(ok={"n1": 1}, failures={"n1": 1}))
    assert rec.calls == [("n1", False, False)]
    assert c.hosts["n1"].failed
    assert c.hosts["n1"].failed_tasks[0].msg == "cpu_weight: out of range"


def test_ignored_errors_are_not_failures():
    c = EventCollector(["n1"])
    c.handle(ev("runner_on_failed", "n1", "cleanup", {"msg": "x"}, ignore_errors=True))
    c.handle(ev("runner_on_ok", "n1", runner.HOST_DONE_TASK))
    assert c.hosts["n1"].ok and c.hosts["n1"].failed_tasks == []


def test_rescued_instance_failure_is_reported_per_instance_and_the_host_stays_ok():
    c = EventCollector(["n1"])
    c.handle(ev("runner_on_failed", "n1", "Wait until the unit is active", {"rc": 124}))
    c.handle(ev("runner_on_ok", "n1", runner.INSTANCE_FAILED_TASK,
                {"msg": {"id": "web-1", "error": "Wait until the unit is active: timeout"}}))
    c.handle(ev("runner_on_ok", "n1", runner.HOST_DONE_TASK))
    c.handle(stats(ok={"n1": 5}, rescued={"n1": 1}))
    host = c.hosts["n1"]
    assert host.ok and not host.failed
    assert host.failed_instances == {"web-1": "Wait until the unit is active: timeout"}


def test_instance_failures_reported_from_a_loop_task():
    c = EventCollector(["n1"])
    c.handle(ev("runner_on_ok", "n1", runner.INSTANCE_FAILED_TASK, {"results": [
        {"msg": {"id": "web-0", "error": "kept: not ready"}},
        {"skipped": True},
        {"msg": {"id": "web-2", "error": "kept: not ready"}}]}))
    assert c.hosts["n1"].failed_instances == {"web-0": "kept: not ready",
                                              "web-2": "kept: not ready"}


def test_hosts_without_a_result_are_closed_as_failed_with_the_reason():
    rec = Recorder()
    c = EventCollector(["n1", "n9"], rec)
    c.handle(ev("runner_on_ok", "n1", runner.HOST_DONE_TASK))
    hosts = c.finish("run canceled")
    assert rec.calls == [("n1", True, False), ("n9", False, False)]
    assert hosts["n9"].failed and hosts["n9"].failed_tasks[-1].msg == "run canceled"
    assert hosts["n1"].failed_tasks == []


def test_a_host_no_event_named_is_reported_missing_from_the_inventory():
    c = EventCollector(["n1", "n9"])
    c.handle(ev("runner_on_ok", "n1", runner.HOST_DONE_TASK))
    hosts = c.finish("run ended (successful)", missing="is not in the inventory")
    assert hosts["n9"].failed_tasks[-1].msg == "n9 is not in the inventory"


def test_a_host_that_started_but_did_not_finish_keeps_the_run_reason():
    c = EventCollector(["n1"])
    c.handle(ev("runner_on_ok", "n1", "Slice"))
    hosts = c.finish("run canceled", missing="is not in the inventory")
    assert hosts["n1"].failed_tasks[-1].msg == "run canceled"


def test_a_broken_callback_does_not_break_the_collector():
    def boom(host, result):
        raise RuntimeError("caller bug")

    c = EventCollector(["n1"], boom)
    c.handle(ev("runner_on_ok", "n1", runner.HOST_DONE_TASK))
    assert c.hosts["n1"].done


@pytest.mark.parametrize(
    ("res", "expected"),
    [
        ({"msg": "boom"}, "boom"),
        ({"stderr": "  bad\n"}, "bad"),
        ({"module_stderr": "Traceback"}, "Traceback"),
        ({}, "failed (no message)"),
        ({"msg": "One or more items failed", "results": [
            {"failed": True, "_ansible_item_label": "web-0", "msg": "no"},
            {"failed": False, "_ansible_item_label": "web-1"},
            {"failed": True, "item": {"instance": {"id": "web-2"}}, "msg": "nope"}]},
         "web-0: no; web-2: nope"),
    ],
)
def test_failure_message(res, expected):
    assert runner.failure_message(res) == expected


def test_runner_args_limit_forks_and_env(tmp_path):
    args = runner.runner_args("place.yml", {"all": {"hosts": {"a": {}, "b": {}}}}, {"x": 1},
                              ["a", "b"], str(tmp_path))
    assert args["limit"] == "a,b"
    assert args["forks"] == 2
    assert args["project_dir"] == str(runner.PLAYBOOK_DIR)
    env = args["envvars"]
    assert env["ANSIBLE_PIPELINING"] == "True"
    pool = Path(env["ANSIBLE_COLLECTIONS_PATH"]) / "ansible_collections" / "walle" / "pool"
    assert pool.resolve() == runner.REPO_ROOT  # the repo is the collection walle.pool


def test_runner_args_hand_ansible_the_extravars_only_as_the_unsafe_file(tmp_path):
    extravars = {"walle_batch": {"a": [{"args": ["{{ 7*6 }}"]}]}}
    args = runner.runner_args("place.yml", "/inv", extravars, ["a"], str(tmp_path))
    assert "extravars" not in args  # ansible-runner would write it as (trusted) JSON
    written = tmp_path / "env" / "extravars"
    assert written.read_text() == runner.extravars_text(extravars)
    assert '!unsafe "{{ 7*6 }}"' in written.read_text()
    assert written.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("limit", "inventory", "forks"),
    [
        (None, {"walle_nodes": {"hosts": {"a": {}}, "children": {"g": {"hosts": {"b": {}}}}}},
         2),
        (None, "/some/inventory.yml", runner.MAX_FORKS),
        ([f"n{i}" for i in range(80)], "/x", runner.MAX_FORKS),
    ],
)
def test_forks_follow_the_host_count(limit, inventory, forks):
    assert runner.forks_for(limit, inventory) == forks


def test_ansible_env_without_a_config_sets_the_ssh_speed_args(tmp_path):
    env = runner.ansible_env(tmp_path)
    assert "ControlPersist=600s" in env["ANSIBLE_SSH_ARGS"]
    assert "ANSIBLE_CONFIG" not in env
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    env = runner.ansible_env(tmp_path)
    assert env["ANSIBLE_CONFIG"] == str(tmp_path / "ansible.cfg")
    assert "ANSIBLE_SSH_ARGS" not in env


def test_empty_limit_runs_nothing():
    result = runner.run_playbook("place.yml", "/nonexistent", {}, [])
    assert result.status == "successful" and result.hosts == {}


def test_unknown_playbook_is_refused():
    with pytest.raises(ValueError, match="playbook"):
        runner.run_playbook("nope.yml", "/nonexistent", {}, ["a"])


def test_an_unreachable_node_fails_its_instances_with_the_ssh_reason():
    from walle.service.executor import _outcome

    host = HostResult("node4", unreachable=True,
                      failed_tasks=[TaskFailure("Slice", "ssh: connect to host 10.77.3.14 "
                                                         "port 22: No route to host")])
    outcome = _outcome(host, "api-3", runner.RunResult("failed", 4, {"node4": host}, 1.0))
    assert not outcome.ok
    assert outcome.error == ("node node4 unreachable: ssh: connect to host 10.77.3.14 port 22: "
                             "No route to host")
