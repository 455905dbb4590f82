"""The job commands against a Consul HTTP API: exit codes scripts can trust, JSON output, CAS
writes that keep the previous version."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from walle.adapters.consul import Allocation, ConsulApi, ConsulConfig, LeaderLock, StateStore
from walle.cli.main import main

pytestmark = pytest.mark.consul

WEB = "examples/web.yml"




def walle(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_stores_the_job_and_a_second_run_changes_nothing(addr, capsys):
    code, out, _ = walle(capsys, "run", WEB, "--consul-addr", addr, "--json")
    assert code == 0 and json.loads(out)["changed"] is True
    code, out, _ = walle(capsys, "run", WEB, "--consul-addr", addr, "--json")
    assert code == 0 and json.loads(out)["changed"] is False
    code, out, _ = walle(capsys, "status", "--consul-addr", addr, "--json")
    (row,) = json.loads(out)["jobs"]
    assert row["job"] == "web" and row["count"] == 3 and row["running"] == 0


def test_scale_keeps_the_previous_version_for_rollback(addr, capsys):
    walle(capsys, "run", WEB, "--consul-addr", addr)
    code, _, _ = walle(capsys, "scale", "web", "1", "--consul-addr", addr)
    assert code == 0
    stored = StateStore(ConsulApi(ConsulConfig.from_env(addr=addr))).job("web")
    assert stored.spec["count"] == 1 and stored.previous["spec"]["count"] == 3


def test_bad_input_exits_2_and_unknown_jobs_exit_1(addr, capsys, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: Bad_Name\nkind: service\n")
    code, _, err = walle(capsys, "run", str(bad), "--consul-addr", addr)
    assert code == 2 and "name" in err
    code, _, err = walle(capsys, "stop", "nope", "--consul-addr", addr)
    assert code == 1 and "no job 'nope'" in err
    code, _, _ = walle(capsys, "scale", "web", "-1", "--consul-addr", addr)
    assert code == 2


def test_stop_removes_the_job(addr, capsys):
    walle(capsys, "run", WEB, "--consul-addr", addr)
    code, _, _ = walle(capsys, "stop", "web", "--consul-addr", addr)
    assert code == 0
    code, out, _ = walle(capsys, "status", "--consul-addr", addr, "--json")
    assert json.loads(out) == {"jobs": [], "unreadable": []}


def test_an_unreachable_consul_exits_3_naming_the_address(capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = walle(capsys, "status", "--consul-addr", f"http://127.0.0.1:{port}")
    assert code == 3 and f"127.0.0.1:{port}" in err


def test_status_of_a_cron_job_shows_the_runs_its_nodes_recorded(addr, capsys):
    """walle-cron-record's key, as a node writes it (plus what a bad node could write), read
    back by `walle status JOB`: the table and each instance's `runs` in --json."""
    walle(capsys, "run", "examples/nightly.yml", "--consul-addr", addr)
    api = ConsulApi(ConsulConfig.from_env(addr=addr))
    runs = [
        {"node": "node1", "start": 1764640800.0, "end": 1764640801.5, "result": "exit-code",
         "exit_code": "exited", "exit_status": "3", "attempt": 1, "retry": True},
        {"node": "node1", "start": 1764640806.5, "end": 1764640807.0, "result": "success",
         "exit_code": "exited", "exit_status": "0", "attempt": 2, "retry": False},
        "garbage", {"attempt": "1"}, {"node": "n\x1b[31m", "attempt": 1, "end": 1e308},
    ]
    api.client.kv.put("walle/runs/nightly-report/0", json.dumps(runs))
    api.client.kv.put("walle/runs/nightly-report/1", "not json")
    lock = LeaderLock(api, name="test-leader", lock_delay=0)
    assert lock.acquire()
    record = Allocation(job="nightly-report", slot=0, node="node1", state="running",
                        version="v1")
    assert StateStore(api).write_allocs([record], session=lock.session_id).ok
    code, out, _ = walle(capsys, "status", "nightly-report", "--consul-addr", addr)
    assert code == 0
    lines = out[out.index("last runs"):].splitlines()
    assert lines[0] == "last runs (3):"
    assert "exited 3" in out and "exited 0" in out and "\x1b" not in out
    code, out, _ = walle(capsys, "status", "nightly-report", "--consul-addr", addr, "--json")
    assert code == 0
    seen = [(r["attempt"], r["exit_status"], r["retry"]) for r in json.loads(out)[0]["runs"]]
    assert seen[-2:] == [(1, "3", True), (2, "0", False)] and len(seen) == 3


def test_status_of_a_cron_job_with_runs_side_by_side_names_each_run(addr, capsys, tmp_path):
    """concurrency: allow: attempts of overlapping runs carry the run id, shown in a `run`
    column and in --json (a forbid job's table has no such column: the test above)."""
    spec = Path("examples/nightly.yml").read_text().replace("name: nightly-report",
                                                              "name: overlapping")
    (tmp_path / "overlapping.yml").write_text(spec)
    walle(capsys, "run", str(tmp_path / "overlapping.yml"), "--consul-addr", addr)
    api = ConsulApi(ConsulConfig.from_env(addr=addr))
    runs = [{"node": "node1", "start": 1764640800.0 + k, "end": 1764640808.0 + k,
             "result": "success", "exit_code": "exited", "exit_status": "0", "attempt": 1,
             "retry": False, "run": run} for k, run in ((0, "r-a"), (5, "r-b"))]
    api.client.kv.put("walle/runs/overlapping/0", json.dumps(runs))
    lock = LeaderLock(api, name="test-leader", lock_delay=0)
    assert lock.acquire()
    record = Allocation(job="overlapping", slot=0, node="node1", state="running", version="v1")
    assert StateStore(api).write_allocs([record], session=lock.session_id).ok
    code, out, _ = walle(capsys, "status", "overlapping", "--consul-addr", addr)
    table = out[out.index("last runs"):].splitlines()
    assert code == 0 and table[1].split()[:3] == ["SLOT", "RUN", "NODE"]
    assert [line.split()[1] for line in table[2:4]] == ["r-a", "r-b"]
    code, out, _ = walle(capsys, "status", "overlapping", "--consul-addr", addr, "--json")
    assert [r["run"] for r in json.loads(out)[0]["runs"]] == ["r-a", "r-b"]


def test_status_of_a_service_has_no_runs(addr, capsys):
    walle(capsys, "run", WEB, "--consul-addr", addr)
    code, out, _ = walle(capsys, "status", "web", "--consul-addr", addr)
    assert code == 0 and "last runs" not in out
