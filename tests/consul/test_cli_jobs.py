"""The job commands against a Consul HTTP API: exit codes scripts can trust, JSON output, CAS
writes that keep the previous version."""

from __future__ import annotations

import json
import socket

import pytest

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
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
