"""A bounded chaos run (bench/chaos.py) in the lab: every fault kind at least once, partitions
included, while a service, a cron job and batch jobs run, and no invariant may break (see
bench/README.md).

Partitions are safe since node-side fencing (docs/architecture.md, "Fencing"): a cut-off node
stops its own Walle units within its fence time (walle-fence, 10 s) and the leader moves its
work only after the down grace (15 s from Serf's detection), so no slot runs on two nodes; the
observer allows a partitioned node's copies only for --fence-bound s after the cut and not at
all after the heal.

It boots its own 4-node lab (own name, bridge and subnet) and removes it at the end. About
8-12 minutes on the 2-core machine: ~1 min setup, 3 min of faults (longer until every kind
was injected once, at most 10), the final checks.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from walle.adapters.runner import REPO_ROOT

pytestmark = pytest.mark.lab
KINDS = ("node-kill", "leader-kill", "schedulers-kill", "standin-kill", "partition",
         "agent-restart")


@pytest.mark.timeout(1900)  # the run is bounded by its own --max-minutes and timeout below
def test_a_bounded_chaos_run_breaks_no_invariant(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (systemd-nspawn, bridges, mounts)")
    argv = [sys.executable, str(REPO_ROOT / "bench" / "chaos.py"), "--lab", f"c{os.getpid()}",
            "--minutes", "3", "--seed", "7", "--node-down", "10-20", "--partition", "20-25",
            "--kinds", ",".join(KINDS), "--every-kind", "--max-minutes", "10",
            "--submit-every", "20", "--bound", "120", "--logs", str(tmp_path / "logs")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT / "scheduler"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env,
                          check=False)
    out = proc.stdout
    assert "invariant violations: 0" in out and proc.returncode == 0, \
        f"rc {proc.returncode}\n{out}\n--- log tail ---\n{proc.stderr[-4000:]}"
    # every kind was injected (--every-kind goes on until the first round is complete)
    for kind in KINDS:
        assert f"\n  {kind} " in out, out
