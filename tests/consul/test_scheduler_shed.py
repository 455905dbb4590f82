"""Shedding in the leader's loop (core/shed.py, service/shed.py): two 4-core nodes whose
instances use all they are granted (a fake usage reader, as each node's walle-exporter would
say, each instance using min(want, its grant) on the node it runs on), a quiet 16-core node,
the recording executor standing in for the playbooks, and the Consul stand-in. Each busy
node sheds one instance to the quiet one, through the graceful move path (new instance up,
then the old one stops with its drain), each move an event saying why, `walle plan` showing
it before the leader makes it, and never more than one move a minute."""

from __future__ import annotations

import pytest
from test_scheduler_elastic import GrantKeeper
from test_scheduler_service import Clock, records, register_node

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.core.shed import ShedPolicy
from walle.jobspec import parse_spec
from walle.lab.consul_standin import start_in_thread
from walle.service.cluster import load_snapshot
from walle.service.dryrun import MOVE, dry_run, published_defaults, published_pressure
from walle.service.history import from_data
from walle.service.scheduler import Scheduler, SchedulerConfig

pytestmark = pytest.mark.consul

GIB = 1024 ** 3


class Busy:
    """Every instance wants 2 cores and uses what its grant lets it, where it runs now."""

    def __init__(self, executor: GrantKeeper):
        self.executor = executor

    def __call__(self, nodes):
        out = {}
        for node in nodes:
            for key in self.executor.on_node.get(node, {}):
                grant = self.executor.grants[key]
                out[(node, key)] = {"cpu_percent": min(200.0, grant.cpu_quota_percent),
                                    "memory_bytes": 64 << 20}
        return out


def job(name: str, port: int, nodes: list[str]):
    return parse_spec({"name": name, "kind": "service", "count": 1,
                       "resources": {"cpu": "0.5-2", "memory": "128M-512M"},
                       "runtime": {"command": "/usr/bin/python3", "args": ["-m", "http.server"]},
                       "constraints": [{"attribute": "name", "operator": "in", "value": nodes}],
                       "service": {"port": port}, "health": {"type": "tcp"},
                       "stop": {"drain": "3s"}})


@pytest.fixture
def api(tmp_path):
    standin = start_in_thread(data_dir=tmp_path / "consul", node_name="walle-test-server")
    host, port = standin.http_addr
    api = ConsulApi(ConsulConfig.from_env(addr=f"http://{host}:{port}"))
    register_node(api, "node1", "10.77.250.11", cpu=4, memory=8 * GIB)
    register_node(api, "node3", "10.77.250.13", cpu=4, memory=8 * GIB)
    try:
        yield api
    finally:
        standin.stop()


def moved_events(api, name):
    _, stored = StateStore(api).events(name)
    return [e for e in from_data(stored[name][0]).events if e.event == "moved"]


def test_busy_nodes_shed_to_a_quiet_one_one_move_a_minute(api):
    clock = Clock()
    ex = GrantKeeper(api)
    config = SchedulerConfig(name="s1", inventory="unused", lock_delay=0, seed=7,
                             usage_interval=15.0, shed=ShedPolicy(samples=3))
    s = Scheduler(api, config, executor=ex, clock=clock, usage_reader=Busy(ex))
    assert s.lock.acquire()
    store = StateStore(api)
    for name, port, node in (("a", 8081, "node1"), ("b", 8082, "node1"),
                             ("c", 8083, "node3"), ("d", 8084, "node3")):
        assert store.put_job(job(name, port, [node, "node2"]), 0)
    s.step()
    s.step()
    assert {k: a.node for k, a in records(api).items()} == {
        "a-0": "node1", "b-0": "node1", "c-0": "node3", "d-0": "node3"}
    register_node(api, "node2", "10.77.250.12", cpu=16, memory=32 * GIB)  # the quiet one

    def reading():
        """One usage reading, 15 s on: read in the background, taken by the step after (the
        reports of both steps)."""
        clock.now += 15
        first = s.step()
        s.usage.join(timeout=30)
        return [first, s.step()]

    # 4 of 4 cores used on node1 and node3: pressed, 3 samples in a row (the first reading
    # was started by the second step above; it and the next one arrive together)
    for _ in range(2):
        assert not any(r.plan.migrates for r in reading())
    assert {n: p.cpu_streak for n, p in s.shedder.samples.items()} == {
        "node1": 3, "node2": 0, "node3": 3}
    # what the next step will do, as `walle plan` sees it from the leader's published samples
    snap = load_snapshot(api, store)
    defaults, _ = published_defaults(store)
    run = dry_run(snap, defaults, clock.now, pressure=published_pressure(store))
    planned = {d.instance: d for j in run.jobs for d in j.slots if d.action == MOVE}
    assert list(planned) == ["a-0"] and planned["a-0"].node == "node2"
    assert planned["a-0"].reason.startswith("from node1: node1 under cpu pressure 3 samples")

    first = s.step()
    (move,) = first.plan.migrates  # both nodes are under pressure; the bound allows one
    assert (move.old.key, move.old.node, move.new.node, move.shed) == \
        ("a-0", "node1", "node2", True)
    assert ("a-0", "node2") in ex.placed and ("a-0", "node1") not in ex.stopped
    moved_at = clock.now
    (event,) = moved_events(api, "a")
    assert event.node == "node2" and event.message == (
        "from node1: node1 under cpu pressure 3 samples (used 4.00 cores of 4.00 cores, "
        "wanted 4.00 cores)")

    s.step()  # the new instance passes its checks: the old one leaves, with its drain
    assert ("a-0", "node1") in ex.stopped and ex.drains["a-0"] == 3.0
    assert records(api)["a-0"].node == "node2"

    moves = []
    while clock.now < moved_at + 120:  # node3 stays pressed all along
        moves += [(clock.now, m.old.key, m.new.node) for r in reading()
                  for m in r.plan.migrates]
    assert len(moves) == 1, moves
    when, key, where = moves[0]
    assert key in ("c-0", "d-0") and where == "node2"
    assert when - moved_at >= 60  # the bound: one move a minute, cluster-wide
    assert len(moved_events(api, key.split("-")[0])) == 1
    assert not moved_events(api, "b")  # node1 is no longer pressed: b stays
    assert records(api)["b-0"].node == "node1"
    s.lock.step_down()
