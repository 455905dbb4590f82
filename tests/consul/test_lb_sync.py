"""walle-lb-sync (roles/lb) against a Consul HTTP API: its blocking query on walle/jobs/ wakes
when `walle run` stores a job asking for service.lb, and the frontend appears (checked with the
real `haproxy -c`, HAProxy reloaded once); the job stopped, the frontend goes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.jobspec import parse_spec

pytestmark = [pytest.mark.consul,
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="haproxy missing: scripts/setup.sh installs it")]

ROLE = Path(__file__).resolve().parents[2] / "roles/lb"




def spec(name: str, lb_port: int):
    return parse_spec({"name": name, "kind": "service", "count": 2,
                       "resources": {"cpu": "0.1", "memory": "64M"},
                       "runtime": {"command": "/usr/bin/python3"},
                       "service": {"port": 8080, "lb": {"port": lb_port}}})


def wait_until(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s")


def test_the_sync_follows_the_jobs_in_kv(addr, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from test_lb_role import render_base  # the role's base file, as the role renders it

    base, services, reloads = (tmp_path / "00-walle-base.cfg", tmp_path / "50-services.cfg",
                               tmp_path / "reloads")
    base.write_text(render_base())
    store = StateStore(ConsulApi(ConsulConfig.from_env(addr=addr)))
    proc = subprocess.Popen(
        [sys.executable, str(ROLE / "files/walle_lb_sync.py"), "--consul", addr,
         "--config", str(services), "--base", str(base), "--reserved-port", "8404",
         "--haproxy", shutil.which("haproxy"),
         "--reload", f"{sys.executable} -c \"open('{reloads}', 'a').write('r')\""],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(services.exists)  # no jobs yet: an empty services file
        assert "frontend" not in services.read_text()
        assert store.put_job(spec("shop", 8081), 0)
        wait_until(lambda: "frontend walle-shop-8081" in services.read_text())
        # two reloads: the first file (no frontends), then shop's; waiting for any "r" raced
        # with shop's reload under load (the first one's "r" satisfied it)
        wait_until(lambda: reloads.exists() and len(reloads.read_text()) == 2)
        count = len(reloads.read_text())
        assert store.put_job(spec("taken", 8404), 0)  # the stats port: left out, logged
        time.sleep(1.5)
        assert "taken" not in services.read_text()
        assert len(reloads.read_text()) == count  # nothing changed: no reload
        job = store.job("shop")
        assert store.delete_job("shop", job.modify_index)
        wait_until(lambda: "frontend" not in services.read_text())
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "job 'taken': left out: service.lb.port 8404 is used by the lb host itself" in out
