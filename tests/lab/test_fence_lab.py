"""Fencing on real nodes (docs/architecture.md, "Fencing"): a node cut off by a partition (its
veth leaves the lab bridge: walle.lab.faults.partition) stops its Walle units itself within its
fence time (walle-fence, installed by site.yml), and only after the leader's down grace is its
work placed elsewhere; after the heal nothing runs twice.

Ground truth comes from the nodes themselves (nsenter: it also sees the cut-off node). The
3-node lab of test_scheduler_lab's `pool` (own name, bridge and subnet), removed at the end; the
partition is healed in any case.
About 3-4 minutes on the 2-core machine.
"""

from __future__ import annotations

import time

import pytest
import test_scheduler_lab
from test_scheduler_lab import Pool, api_spec

from walle.cli.demo import submit
from walle.lab import faults
from walle.service.presence import DEFAULT_DOWN_GRACE, DEFAULT_FENCE_AFTER

pytestmark = pytest.mark.lab

pool = test_scheduler_lab.pool  # the fixture: a 3-node lab, site.yml, two schedulers

FENCE_SLACK = 6.0  # the fence checks every 1 s with a 2 s timeout; the stop runs ExecStop=
POLL = 0.5


def active_slots(pool: Pool, job: str = "api") -> dict[str, list[str]]:
    """instance -> nodes whose systemd runs its unit (active/activating/deactivating)."""
    out: dict[str, list[str]] = {}
    for entry in pool.lab.nodes:
        if faults.node_init_pid(pool.lab, entry.name) is None:
            continue
        proc = faults.node_exec(pool.lab, entry.name, [
            "systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager",
            f"walle-{job}-*.service"])
        for line in proc.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 3 and cols[2] in ("active", "activating", "deactivating"):
                slot = cols[0].removesuffix(".service").rpartition("-")[2]
                out.setdefault(f"{job}-{slot}", []).append(entry.name)
    return out


def test_walle_fence_runs_on_every_node(pool):
    for entry in pool.lab.nodes:
        proc = faults.node_exec(pool.lab, entry.name, ["systemctl", "is-active",
                                                       "walle-fence.service"])
        assert proc.stdout.strip() == "active", (entry.name, proc.stdout, proc.stderr)


def test_a_partitioned_node_stops_its_units_before_they_run_elsewhere(pool):
    submit(pool.store, api_spec(count=2))  # one port per node: a free node to move to
    pool.wait("2 running", lambda: pool.converged("api", 2))
    victim = pool.records()["api-1"].alloc.node
    assert active_slots(pool)["api-1"] == [victim]

    doubled: list[tuple[float, dict]] = []
    stopped_at = moved_at = down_at = None
    t0 = time.monotonic()
    faults.partition(pool.lab, victim)
    try:
        deadline = t0 + DEFAULT_DOWN_GRACE + 90
        while time.monotonic() < deadline and (stopped_at is None or moved_at is None):
            now = time.monotonic() - t0
            slots = active_slots(pool)
            if any(len(nodes) > 1 for nodes in slots.values()):
                doubled.append((now, slots))
            if stopped_at is None and victim not in slots.get("api-1", []):
                stopped_at = now
            snap = pool.snapshot()
            node = snap.nodes.get(victim)
            if down_at is None and (node is None or node.state == "down"):
                down_at = now  # Serf's detection, as the leader reads it
            record = snap.records.get("api-1")
            if moved_at is None and record and record.alloc.node != victim:
                moved_at = now
            time.sleep(POLL)
        print(f"\nfence figures (s from the partition): {victim} down in Consul "
              f"{down_at}, its unit stopped {stopped_at}, the slot re-placed {moved_at}")
        assert stopped_at is not None and stopped_at <= DEFAULT_FENCE_AFTER + FENCE_SLACK
        assert moved_at is not None and moved_at > stopped_at
        # the down grace runs from Serf's detection (5-8 s after the cut)
        assert down_at is not None and moved_at >= DEFAULT_DOWN_GRACE
        journal = faults.node_exec(pool.lab, victim, [
            "journalctl", "-u", "walle-fence", "--no-pager", "-o", "cat"]).stdout
        assert journal.count("FENCED") == 1 and "walle-api-1.service" in journal, journal
        pool.wait("api-1 running elsewhere", lambda: pool.converged("api", 2), 120)
    finally:
        faults.heal(pool.lab, victim)

    pool.wait("the node is back", lambda: pool.snapshot().nodes.get(victim) is not None
              and pool.snapshot().nodes[victim].state != "down", 120)
    pool.wait("converged after the heal", lambda: pool.converged("api", 2), 120)
    end = time.monotonic() + 15  # nothing runs twice after the heal either
    while time.monotonic() < end:
        slots = active_slots(pool)
        if any(len(nodes) > 1 for nodes in slots.values()):
            doubled.append((time.monotonic() - t0, slots))
        time.sleep(POLL)
    assert doubled == []
    where = {k: r.alloc.node for k, r in pool.records().items()}
    assert {k: nodes for k, nodes in active_slots(pool).items()} == \
        {k: [node] for k, node in where.items()}
    pool.store.delete_job("api", pool.store.job("api").modify_index)
