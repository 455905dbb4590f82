"""The real place.yml hands a job's secrets to walle_workload and logs them nowhere.

Runs playbooks/place.yml through the runner adapter (walle.adapters.runner.run_playbook) on a
local connection, with stand-in walle_slice / walle_workload modules that echo what they got
(so only the playbook's own no_log can keep the value out of the output). The runner's private
folder is kept for inspection: nothing under artifacts/ (stdout, events, status) and nothing
the adapter returns may contain the value."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest

from walle.adapters import runner

SECRET = "p4ss-do-not-log-42"
EVENTS: list[str] = []  # every event the adapter received, as JSON
ECHO_MODULE = """#!/usr/bin/python3
# WANT_JSON
import json, sys
args = json.load(open(sys.argv[1]))
if args.get("probe"):
    with open(args["probe"], "w") as f:
        json.dump(args.get("credentials"), f)
# Like AnsibleModule with a no_log option, the message masks the values; the raw `echo`
# field does not, so only the task's no_log keeps it out of the events.
msg = "got " + json.dumps(args)
for value in (args.get("credentials") or {}).values():
    msg = msg.replace(value, "********")
print(json.dumps({"changed": True, "active_state": "active", "echo": args,
                  "failed": bool(args.get("fail")), "msg": msg}))
"""


@pytest.fixture
def kept_private_dir(tmp_path, monkeypatch):
    """run_playbook's private data dir, kept after the run (it normally goes with it)."""
    kept = tmp_path / "private"
    kept.mkdir()

    @contextlib.contextmanager
    def keep(prefix=""):
        yield str(kept)

    monkeypatch.setattr(runner.tempfile, "TemporaryDirectory", keep)
    seen = runner.EventCollector.handle

    def record(collector, event):
        EVENTS.append(json.dumps(event, default=str))
        return seen(collector, event)

    EVENTS.clear()
    monkeypatch.setattr(runner.EventCollector, "handle", record)
    # a stand-in walle.pool collection holding the two echo modules
    collections = tmp_path / "collections"
    library = collections / "ansible_collections" / "walle" / "pool" / "plugins" / "modules"
    library.mkdir(parents=True)
    for name in ("walle_slice", "walle_workload", "walle_image"):  # all place.yml names
        (library / f"{name}.py").write_text(ECHO_MODULE)
    env = {**runner.ansible_env(), "ANSIBLE_COLLECTIONS_PATH": str(collections)}
    monkeypatch.setattr(runner, "ansible_env", lambda: env)
    return kept


def instance(iid: str, probe: Path) -> dict:
    return {"instance": {"id": iid, "job": "web", "slot": 0, "unit": "walle-web-0",
                         "wait_unit": None, "digest": "d"},
            "slice": {"name": "walle-web-0.slice"},
            "workload": {"name": "walle-web-0", "probe": str(probe)},
            "service": None}


def assert_no_leak(private_dir: Path, result: runner.RunResult) -> None:
    files = [p for p in (private_dir / "artifacts").rglob("*") if p.is_file()]
    assert files, "ansible-runner wrote no artifacts"
    assert [str(p) for p in files if SECRET.encode() in p.read_bytes()] == []
    assert EVENTS and [e for e in EVENTS if SECRET in e] == []
    assert SECRET not in result.output_tail and SECRET not in repr(result)


def test_place_yml_delivers_secrets_with_no_log(tmp_path, kept_private_dir):
    probe, plain_probe = tmp_path / "probe.json", tmp_path / "plain.json"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    result = runner.run_playbook(
        "place.yml", {"all": {"hosts": {"n1": local}}},
        {"walle_batch": {"n1": [instance("web-0", probe), instance("api-0", plain_probe)]},
         "walle_register": False,
         "walle_credentials": {"web-0": {"db_password": SECRET}}},
        ["n1"], timeout=120)
    assert result.status == "successful", result.output_tail
    assert result.hosts["n1"].ok and not result.hosts["n1"].failed_instances
    # the module got the value, and only the instance that has secrets got any
    assert json.loads(probe.read_text()) == {"db_password": SECRET}
    assert json.loads(plain_probe.read_text()) is None
    # ... but no output, event or status file of the run holds it
    assert_no_leak(kept_private_dir, result)
    plain = [e for e in EVENTS if "plain.json" in e and '"echo"' in e]
    assert plain, "the instance without secrets keeps its normal output"


def test_a_failing_instance_with_secrets_is_reported_without_them(tmp_path, kept_private_dir):
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    failing = instance("web-0", tmp_path / "probe.json")
    failing["workload"]["fail"] = True
    result = runner.run_playbook(
        "place.yml", {"all": {"hosts": {"n1": local}}},
        {"walle_batch": {"n1": [failing]}, "walle_register": False,
         "walle_credentials": {"web-0": {"db_password": SECRET}}}, ["n1"], timeout=120)
    assert "web-0" in result.hosts["n1"].failed_instances
    assert "Workload" in result.hosts["n1"].failed_instances["web-0"]
    assert "********" in result.hosts["n1"].failed_instances["web-0"]  # the module's own mask
    assert_no_leak(kept_private_dir, result)
