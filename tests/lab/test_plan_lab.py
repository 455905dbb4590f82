"""Issue 10's scenario in the lab: the demo's job as it was before dynamic ports
(tests/data/web-static.yml: 3 instances, distinct_hosts, port 8080) on 3 real nodes, then
the node running web-1 is killed.
`walle plan web --explain` must say that web-1 cannot be placed and why, as the leader decides
it, and must not call a node that already runs web "best"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_scheduler_lab import Pool, pool  # noqa: F401 - the module's own 3-node lab

from walle.cli.demo import submit
from walle.cli.main import main
from walle.jobspec import load_spec_file

pytestmark = pytest.mark.lab

WEB_STATIC = Path(__file__).parents[1] / "data" / "web-static.yml"


def plan(pool: Pool, capsys, *argv: str) -> tuple[int, str]:  # noqa: F811 - the fixture
    code = main(["plan", *argv, "--consul-addr", pool.api.address])
    return code, capsys.readouterr().out


def test_plan_says_why_web_1_cannot_move_off_a_dead_node(pool, capsys):  # noqa: F811
    submit(pool.store, load_spec_file(WEB_STATIC))
    pool.wait("web running", lambda: pool.converged("web", 3))
    code, out = plan(pool, capsys, "web", "--json")
    body = json.loads(out)
    assert code == 0 and body["defaults"]["source"] == "published by the leader"
    victim = pool.records("web")["web-1"].alloc.node
    pool.lab.kill_node(victim)
    try:
        pool.wait("the node is down", lambda: pool.snapshot().nodes[victim].state == "down", 60)
        # within the down grace (fencing: a failed node may be a cut-off one still running
        # it) the slot is held, as the leader holds it; then it has no place
        answers = []
        pool.wait("plan says web-1 has no place",
                  lambda: answers.append(plan(pool, capsys, "web", "--explain"))
                  or answers[-1][0] == 1, 90)
        code, out = answers[-1]
        row = next(line for line in out.splitlines() if line.startswith("web-1"))
        held = [o for c, o in answers if c == 0]
        assert all("held" in next(ln for ln in o.splitlines() if ln.startswith("web-1"))
                   for o in held)
        # refused, or waiting out its back-off once its checks failed: either way no place,
        # and the core's reasons
        assert f"on {victim} (node" in row and ("refused" in row or "waiting" in row)
        assert "2 nodes: distinct_hosts" in row and "1 node: node down" in row
        assert "best" not in out
    finally:
        pool.lab.restart_node(victim)
    pool.wait("web running again", lambda: pool.converged("web", 3), 180)
    assert plan(pool, capsys, "web")[0] == 0
