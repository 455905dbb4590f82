"""Dynamic membership in the lab: the scheduler's inventory is Consul's catalog (the
walle_consul plugin), so `walle lab add` brings a node that receives work with no scheduler
restart and no file edit, and `walle lab remove` drains it, makes it leave and powers it off,
leaving nothing that points at it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_scheduler_lab import api_spec, running_pool

from walle.adapters.runner import ansible_env
from walle.cli.demo import submit
from walle.cli.main import main
from walle.lab.nodes import Lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def pool():
    with running_pool("m", schedulers=1) as p:
        yield p


def pool_graph(lab: Lab) -> str:
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-inventory"),
                          "-i", str(lab.pool_inventory_path), "--graph"],
                         env={**os.environ, **ansible_env()}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_added_node_gets_work_and_a_removed_one_gives_it_back(pool):
    lab, store = pool.lab, pool.store
    # Two instances of a one-port-per-node service: one node of three stays free. Draining
    # it leaves only the node about to join for the third instance.
    submit(store, api_spec(count=2))
    pool.wait("2 running", lambda: pool.converged("api", 2))
    free = ({"node1", "node2", "node3"} - {r.alloc.node for r in pool.records().values()}).pop()
    store.set_drain(free)
    schedulers = pool.scheduler_pids()
    inventory_before = lab.pool_inventory_path.read_text()

    assert main(["lab", "--name", lab.name, "add"]) == 0
    lab = pool.lab = Lab(lab.name, progress=lambda msg: None)  # the CLI recorded node4
    assert [n.name for n in lab.nodes] == ["node1", "node2", "node3", "node4"]
    pool.wait("node4 in the catalog", lambda: "node4" in pool.snapshot().nodes, 60)
    assert "node4" in pool_graph(lab)

    submit(store, api_spec(count=3))
    pool.wait("3 running", lambda: pool.converged("api", 3))
    placed = {k: r.alloc.node for k, r in pool.records().items()}
    assert placed["api-2"] == "node4", placed
    assert pool.active_units()["node4"] == ["walle-api-2.service"]
    # no scheduler restart, no file edit: the same processes, the same inventory file
    assert pool.scheduler_pids() == schedulers
    assert lab.pool_inventory_path.read_text() == inventory_before

    store.set_drain(free, False)
    assert main(["lab", "--name", lab.name, "remove", "node4", "--timeout", "180"]) == 0
    lab = pool.lab = Lab(lab.name, progress=lambda msg: None)
    pool.wait("3 running", lambda: pool.converged("api", 3))
    assert {k: r.alloc.node for k, r in pool.records().items()}["api-2"] == free
    # nothing points at node4: the catalog, the pool, the static inventory, the drain key
    assert "node4" not in pool.snapshot().nodes
    assert "node4" not in pool_graph(lab)
    assert "node4" not in lab.inventory_path.read_text()
    assert [n.name for n in lab.nodes] == ["node1", "node2", "node3"]
    assert pool.api.client.kv.get("walle/nodes/node4", recurse=True)[1] is None
    assert not (lab.dir / "nodes" / "node4").exists()
    assert sorted(pool.active_units()) == ["node1", "node2", "node3"]
