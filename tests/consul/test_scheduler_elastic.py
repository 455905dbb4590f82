"""Usage-driven grants in the leader's loop (service/elastic.py): readings from a fake usage
reader (what each node's walle-exporter would say, in a closed loop: an instance uses at most
its grant), the recording executor of test_scheduler_service standing in for grants.yml, and a
fresh stand-in with one 2-core node shared by two jobs."""

from __future__ import annotations

import threading

import pytest
from test_scheduler_service import Clock, RecordingExecutor, records, register_node

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.jobspec import parse_spec
from walle.lab.consul_standin import start_in_thread
from walle.service.scheduler import Scheduler, SchedulerConfig

pytestmark = pytest.mark.consul

GIB = 1024 ** 3


class GrantKeeper(RecordingExecutor):
    """The recording executor, remembering the grant each instance runs with."""

    def __init__(self, api):
        super().__init__(api)
        self.grants: dict = {}

    def place(self, items, addresses, replacing=()):
        self.grants.update({a.key: a.grant for a, _ in items})
        return super().place(items, addresses, replacing)

    def regrant(self, items):
        self.grants.update({a.key: a.grant for a, _ in items})
        return super().regrant(items)


class Workload:
    """What the instances want; each uses min(want, its grant), as a cgroup would let it."""

    def __init__(self, executor: GrantKeeper):
        self.executor = executor
        self.cpu = {"a-0": 0.0, "b-0": 0.0}  # cores wanted
        self.reads = 0

    def __call__(self, nodes):
        self.reads += 1
        out = {}
        for key, want in self.cpu.items():
            grant = self.executor.grants.get(key)
            if grant is not None and "node1" in nodes:
                used = min(want, grant.cpu_quota_percent / 100)
                out[("node1", key)] = {"cpu_percent": 100 * used}  # memory: not measured
        return out


def job(name: str, port: int):
    return parse_spec({"name": name, "kind": "service", "count": 1,
                       "resources": {"cpu": "0.5-1.8", "memory": "128M-1G"},
                       "runtime": {"command": "/usr/bin/python3", "args": ["-m", "http.server"]},
                       "service": {"port": port}, "health": {"type": "tcp"}})


@pytest.fixture
def node(tmp_path):
    standin = start_in_thread(data_dir=tmp_path / "consul", node_name="walle-test-server")
    host, port = standin.http_addr
    api = ConsulApi(ConsulConfig.from_env(addr=f"http://{host}:{port}"))
    register_node(api, "node1", "10.77.250.11", cpu=2, memory=2 * GIB)
    try:
        yield api
    finally:
        standin.stop()


def leader(api, clock, reader=None, executor=None):
    executor = executor or GrantKeeper(api)
    reader = reader or Workload(executor)
    config = SchedulerConfig(name="s1", inventory="unused", lock_delay=0, seed=7,
                             usage_interval=15.0)
    s = Scheduler(api, config, executor=executor, clock=clock, usage_reader=reader)
    assert s.lock.acquire()
    return s, executor, reader


def sample(s, clock, n=1):
    """n readings: each 15 s later, read in the background, used by the next step."""
    reports = []
    for _ in range(n):
        clock.now += 15
        s.step()
        s.usage.join(timeout=30)
        reports.append(s.step())
    return reports


def quotas(api):
    return {key: a.grant["cpu_quota_percent"] for key, a in records(api).items()}  # as stored


def test_a_busy_instance_gets_the_room_its_idle_neighbour_leaves_and_gives_it_back(node):
    clock = Clock()
    s, ex, load = leader(node, clock)
    for name in ("a", "b"):
        assert StateStore(node).put_job(job(name, 8080 + len(name) * ord(name)), 0)
    s.step()
    s.step()
    assert quotas(node) == {"a-0": 100, "b-0": 100}  # the declared split of 2 cores
    load.cpu = {"a-0": 1.8, "b-0": 0.0}
    reports = sample(s, clock, 8)
    assert quotas(node) == {"a-0": 150, "b-0": 50}
    said = [how for r in reports for key, how in r.regranted.items() if key == "a-0"]
    assert said[0].startswith("usage: CPUQuota 100% -> 1") and said[0].endswith("(using 100%)")
    assert ex.grants["a-0"].cpu_quota_percent == 150  # applied live (grants.yml)
    assert ex.placed == [("a-0", "node1"), ("b-0", "node1")]  # nothing restarted
    steady = sample(s, clock, 6)
    assert not any(r.regranted for r in steady)  # settled: no change while usage holds

    load.cpu["b-0"] = 1.8  # the neighbour wakes up
    sample(s, clock, 8)
    assert quotas(node) == {"a-0": 100, "b-0": 100}
    from walle.service.history import from_data

    _, stored = StateStore(node).events("a")
    events = [e for e in from_data(stored["a"][0]).events if e.event == "regranted"]
    # the idle neighbour falls to 66% (100 / 1.5 in whole percents): a-0 gets the rest, 134%
    assert [e.message for e in events] == ["usage: CPUQuota 100% -> 134% (using 100%)",
                                           "usage: CPUQuota 134% -> 150% (using 134%)",
                                           "usage: CPUQuota 150% -> 125% (using 150%)",
                                           "usage: CPUQuota 125% -> 100% (using 125%)"]
    s.lock.step_down()

    s2, _, _ = leader(node, clock, executor=ex)  # a new leader keeps the grants it finds
    s2.step()
    assert quotas(node) == {"a-0": 100, "b-0": 100}
    s2.lock.step_down()


def test_a_slow_node_never_holds_a_step(node):
    clock = Clock()
    entered, release = threading.Event(), threading.Event()

    def slow_reader(nodes):
        entered.set()
        release.wait(60)
        return {}

    s, _, _ = leader(node, clock, reader=slow_reader)
    assert StateStore(node).put_job(job("a", 8080), 0)
    s.step()
    s.step()  # running: the first read starts, in the background
    assert entered.wait(30)
    clock.now += 60
    report = s.step()  # returns while the read is still blocked
    assert not release.is_set() and report.regranted == {}
    release.set()
    s.usage.join(timeout=30)
    s.lock.step_down()
