"""The workload sandbox and secrets against real systemd (qemu VM, tests/vm/conftest.py).

The default web service (examples/web.yml) is placed by the real place.yml (walle_slice and
walle_workload through the runner adapter), rated with `systemd-analyze security` and asked
for a page from inside the VM. A job with a secret reads it from $CREDENTIALS_DIRECTORY and
the value is in no unit file, no `systemctl show` output and no runner artifact. nspawn
instances from an image: tests/vm/test_nspawn_instances.py.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

import pytest
from vmtools import FIGURES, REPO, instance, place, show, stop, wait_until

from walle import naming
from walle.adapters import runner
from walle.jobspec import load_spec_file, parse_spec

pytestmark = pytest.mark.vm

EXPOSURE_GOAL = 4.0
SECRET = "vm-secret-7f3a-do-not-log"
STORE = "/var/lib/walle/images"


@pytest.fixture
def kept_runs(tmp_path, monkeypatch):
    """run_playbook's private folders, kept after each run for inspection."""
    kept: list[Path] = []

    @contextlib.contextmanager
    def keep(prefix=""):
        folder = tmp_path / f"run{len(kept)}"
        folder.mkdir()
        kept.append(folder)
        yield str(folder)

    monkeypatch.setattr(runner.tempfile, "TemporaryDirectory", keep)
    return kept


def exposure(vm, unit: str) -> float:
    out = vm.run(f"systemd-analyze security --no-pager {shlex.quote(unit)}", timeout=120,
                 check=True).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert match, out[-2000:]
    return float(match[1])


def test_default_web_service_scores_safe_and_still_serves_http(vm):
    spec = load_spec_file(REPO / "examples" / "web.yml")
    unit = naming.service_unit(spec.name, 0)
    try:
        place(vm, [instance(spec, ports={"http": 20080})])  # its dynamic port, as assigned
        fetch = ("python3 -c \"import urllib.request; "
                 "print(urllib.request.urlopen('http://127.0.0.1:20080/', timeout=5).status)\"")
        status = wait_until(lambda: vm.run(fetch, timeout=60).stdout.strip() == "200", 60,
                            "the web service to answer")
        assert status
        score = exposure(vm, unit)
        FIGURES["web_service_exposure"] = score
        assert score <= EXPOSURE_GOAL
        props = show(vm, unit, "DynamicUser", "User", "NoNewPrivileges", "ProtectSystem",
                     "CapabilityBoundingSet", "MainPID")
        assert props["DynamicUser"] == "yes" and props["NoNewPrivileges"] == "yes"
        assert props["ProtectSystem"] == "strict" and props["CapabilityBoundingSet"] == ""
        uid = vm.run(f"stat -c %u /proc/{props['MainPID']}", check=True).stdout.strip()
        assert uid != "0"
        mode = vm.run(f"stat -c %a /etc/systemd/system/{unit}", check=True).stdout.strip()
        assert mode == "640"
    finally:
        stop(vm, unit)


def secret_job():
    script = ("import os, pathlib, time; "
              "v = pathlib.Path(os.environ['CREDENTIALS_DIRECTORY'], 'db_password').read_text(); "
              "pathlib.Path(os.environ['STATE_DIRECTORY'], 'seen').write_text(v); "
              "time.sleep(600)")
    return parse_spec({
        "name": "vault", "kind": "service",
        "resources": {"cpu": 0.1, "memory": "64M"},
        "runtime": {"type": "exec", "command": "/usr/bin/python3", "args": ["-c", script]},
        "secrets": {"db_password": {"consul": "app/db"}},
    })


def test_a_secret_reaches_the_workload_as_a_credential_and_nowhere_else(vm, kept_runs):
    spec = secret_job()
    stem = naming.unit_stem(spec.name, 0)
    unit = naming.service_unit(spec.name, 0)
    try:
        result = place(vm, [instance(spec)], {naming.instance_id(spec.name, 0):
                                              {"db_password": SECRET}})
        seen = wait_until(lambda: vm.run(f"cat /var/lib/{stem}/seen").stdout, 60,
                          "the workload to read its credential")
        assert seen == SECRET
        # nowhere on the node but the root-only credential file
        leaks = vm.run(f"grep -rl {shlex.quote(SECRET)} /etc/systemd /run/systemd "
                       "/var/log/journal 2>/dev/null; "
                       f"systemctl show {unit} | grep -c {shlex.quote(SECRET)}").stdout.split()
        assert leaks == ["0"], leaks
        modes = vm.run(f"stat -c '%a %U' /run/walle/credentials/{stem} "
                       f"/run/walle/credentials/{stem}/db_password /etc/systemd/system/{unit}",
                       check=True).stdout.splitlines()
        assert modes == ["700 root", "600 root", "640 root"]
        # nowhere on the controller: not in what the adapter returns, not in any artifact
        assert SECRET not in repr(result)
        files = [p for run in kept_runs for p in (run / "artifacts").rglob("*") if p.is_file()]
        assert files and [str(p) for p in files if SECRET.encode() in p.read_bytes()] == []
    finally:
        stop(vm, unit)


def test_a_host_path_image_is_refused(vm, walle):
    with pytest.raises(AssertionError, match="image store"):
        walle.apply(("walle_workload", {"name": "walle-escape-0", "slice": "walle-escape-0.slice",
                                        "runtime": "nspawn", "image": "/",
                                        "command": "/bin/true", "state": "present"}))
    assert show(vm, "walle-escape-0.service", "LoadState") == {"LoadState": "not-found"}
