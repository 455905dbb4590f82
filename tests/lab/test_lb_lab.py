"""Traffic follows the work: HAProxy (roles/lb on node4) in front of a service that asks for
`service.lb`, a steady client stream through it while the pool changes under it.

The scenario is bench/lb.py's (one place; it prints the figures): 4 nodes, node4 the lb host,
node1-3 the service's; each instance binds its own dynamic port (${WALLE_PORT_HTTP}), so
instances share nodes, and answers with its instance name and address:port. One 20 requests/s
stream for the whole run; 3 instances, hard-kill a node running one (the scheduler moves it to
a live node, next to another; the node comes back), scale to 6, down to 3, then a rolling
update. Here the behaviour is asserted, not timings: traffic reaches every live instance at its
current port and only those, nothing goes to a dead server once HAProxy marked it down, a kill
fails few, and scaling up, scaling down and a rolling update fail none (new backends pass their
check before they take traffic; leaving ones leave the pool and drain before SIGTERM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from walle.adapters.runner import REPO_ROOT

pytestmark = pytest.mark.lab


# the bench bounds every wait; at load 35-40 setup takes 15 min and the phases 20 more
@pytest.mark.timeout(3000)
def test_traffic_follows_the_work(tmp_path):
    out = tmp_path / "lb.json"
    argv = [sys.executable, str(REPO_ROOT / "bench" / "lb.py"), "--lab", f"l{os.getpid()}",
            "--trials", "1", "--rate", "20", "--max-seconds", "2400", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=2900, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "scheduler")})
    print(proc.stdout)  # the figures: failed requests and longest gap of each phase
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    phases = result["phases"]
    assert result["lb_host_changed_on_second_run"] == 0  # the lb role is idempotent

    steady = phases["steady"]  # every instance answers, at the port its record holds
    assert steady["failed"] == 0 and sorted(steady["answers"]) == steady["running"]

    (kill,) = result["kills"]
    assert kill["sessions_to_dead_after_down"] == 0, kill  # HAProxy's own count
    assert kill["answered_by_dead_after_down"] == 0, kill
    assert kill["answering_after"] == kill["live"], kill  # every live instance, only those
    assert len(kill["live"]) == 3 and kill["lost"], kill
    assert kill["victim"] not in kill["moved_to"].values(), kill
    assert kill["failed_after"] == 0, kill
    assert kill["failed"] <= 0.05 * kill["sent"], kill  # a hard kill costs few requests

    up = phases["scale-up"]  # 3 new backends took traffic, nothing failed
    assert up["failed"] == 0, up
    assert len(up["new"]) == 3 and sorted(up["answers"]) == up["running"], up
    assert up["nodes_used"] <= 3  # 6 instances on the 3 workers: they share nodes

    for name in ("scale-down", "rolling-update"):  # no request cut
        assert phases[name]["sent"] > 0 and phases[name]["failed"] == 0, phases[name]
    assert len(phases["scale-down"]["running"]) == 3
    assert phases["rolling-update"]["updated"] == 3
