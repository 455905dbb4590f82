"""walle-cron-record (roles/node/files), the program a cron unit runs as ExecStopPost=+ after
every attempt, run against the Consul stand-in with a fake systemctl: it ends a failing run's
retries after `--retries` (and only a run that ended on its own), appends each attempt to the
run history key (bounded), and never fails the unit, not even when Consul is out of reach."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.consul

PROGRAM = Path(__file__).parents[2] / "roles" / "node" / "files" / "walle-cron-record"
UNIT = "walle-tick-0.service"
FAILED = {"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "3"}
SUCCESS = {"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "EXIT_STATUS": "0"}


def _program():
    loader = importlib.machinery.SourceFileLoader("walle_cron_record", str(PROGRAM))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


@pytest.fixture
def hook(tmp_path, monkeypatch):
    """Run the program's main() as systemd would, with a fake systemctl that answers
    NRestarts and the unit's running job and logs every call."""
    module = _program()
    log = tmp_path / "calls"

    def run(env: dict, argv: list[str], restarts: int = 0, job: str = "start",
            unit: str = UNIT) -> int:
        fake = tmp_path / "systemctl"
        jobs = f"7 {unit} {job} running" if job else ""
        fake.write_text("#!/bin/sh\necho \"$@\" >> " + str(log) + "\n"
                        "case \"$1\" in\n"
                        f"  show) echo NRestarts={restarts}; "
                        f"echo ExecMainStartTimestampMonotonic=1000000;;\n"
                        f"  list-jobs) echo '{jobs}';;\n"
                        "esac\n")
        fake.chmod(0o755)
        monkeypatch.setattr(module, "SYSTEMCTL", str(fake))
        for key in ("SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        log.unlink(missing_ok=True)
        return module.main(["--unit", unit, *argv])

    run.calls = lambda: log.read_text().splitlines() if log.exists() else []
    return run


def _history(addr: str, key: str, keep: int = 10, deadline: float = 10) -> list[str]:
    return ["--consul-addr", f"http://{addr}", "--key", key, "--node", "node1",
            "--keep", str(keep), "--deadline", str(deadline)]


def _runs(client, key: str) -> list[dict]:
    _, entry = client.kv.get(key)
    return json.loads(entry["Value"]) if entry else []


def test_a_failed_attempt_with_retries_left_is_recorded_and_left_to_restart(
        hook, consul_addr, consul_client, unique):
    key = f"walle/runs/{unique('tick')}/0"
    assert hook(FAILED, ["--retries", "2", *_history(consul_addr, key)], restarts=1) == 0
    assert not any(c.startswith("stop") for c in hook.calls())
    (run,) = _runs(consul_client, key)
    assert (run["node"], run["attempt"], run["retry"]) == ("node1", 2, True)
    assert (run["result"], run["exit_code"], run["exit_status"]) == ("exit-code", "exited", "3")
    assert run["start"] <= run["end"] <= time.time() + 1


def test_the_last_failed_attempt_forbids_the_restart(hook, consul_addr, consul_client,
                                                     unique):
    key = f"walle/runs/{unique('tick')}/0"
    assert hook(FAILED, ["--retries", "2", *_history(consul_addr, key)], restarts=2) == 0
    assert f"stop --no-block {UNIT}" in hook.calls()
    (run,) = _runs(consul_client, key)
    assert (run["attempt"], run["retry"]) == (3, False)


def test_runs_side_by_side_are_retried_and_recorded_each_as_its_own_run(
        hook, consul_addr, consul_client, unique):
    """concurrency: allow: each run is an instance unit of the slot's template; its retries
    count on its own unit, and its entries name the run."""
    key = f"walle/runs/{unique('tick')}/0"
    first = "walle-tick-0@20261202T101500-41.service"
    second = "walle-tick-0@20261202T101505-77.service"
    history = ["--retries", "1", *_history(consul_addr, key)]
    assert hook(FAILED, history, restarts=0, unit=first) == 0  # retried
    assert hook(SUCCESS, history, restarts=0, unit=second) == 0
    assert hook(FAILED, history, restarts=1, unit=first) == 0  # its last attempt
    assert f"stop --no-block {first}" in hook.calls()
    runs = _runs(consul_client, key)
    assert [(r["run"], r["attempt"], r["retry"], r["result"]) for r in runs] == [
        ("20261202T101500-41", 1, True, "exit-code"), ("20261202T101505-77", 1, False, "success"),
        ("20261202T101500-41", 2, False, "exit-code")]


@pytest.mark.parametrize("job", ["restart", "stop"])
def test_a_run_stopped_from_outside_is_left_alone(hook, job):
    """concurrency: replace restarts a running run, walle stop stops it: the killed attempt
    is not the hook's to end (a stop here would cancel the replace's new run)."""
    killed = {"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "TERM"}
    assert hook(killed, ["--retries", "0"], job=job) == 0
    assert not any(c.startswith("stop") for c in hook.calls())


def test_a_successful_run_is_never_stopped_and_the_history_is_bounded(
        hook, consul_addr, consul_client, unique):
    key = f"walle/runs/{unique('tick')}/3"
    for _ in range(4):
        assert hook(SUCCESS, ["--retries", "0", *_history(consul_addr, key, keep=3)]) == 0
        assert not any(c.startswith("stop") for c in hook.calls())
    runs = _runs(consul_client, key)
    assert len(runs) == 3 and all(r["exit_status"] == "0" for r in runs)
    assert [r["end"] for r in runs] == sorted(r["end"] for r in runs)


def test_consul_out_of_reach_never_fails_the_run(hook, unique, capsys):
    started = time.monotonic()
    key = f"walle/runs/{unique('tick')}/0"
    assert hook(SUCCESS, ["--retries", "1", "--consul-addr", "http://127.0.0.1:9", "--key",
                          key, "--node", "node1", "--deadline", "1.5"]) == 0
    assert "could not record" in capsys.readouterr().err
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("argv", [
    ["--unit", "sshd.service", "--retries", "1"],
    ["--unit", "walle-tick-0@.service", "--retries", "1"],
    ["--unit", "walle-tick-0@a@b.service", "--retries", "1"],
    ["--unit", UNIT, "--retries", "101"],
    ["--unit", UNIT, "--retries", "1", "--key", "walle/done/tick/0",
     "--consul-addr", "http://c:8500"],
    ["--unit", UNIT, "--retries", "1", "--key", "walle/runs/tick/0"],
])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        _program().arguments(argv)
