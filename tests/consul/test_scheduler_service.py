"""The scheduler service against a Consul HTTP API (a fresh stand-in per test), with the
playbook executor replaced by a recorder that registers instances the way place.yml does.

These exercise the service's decisions and its writes to Consul: placement, adoption after a
leader change, migration off a dead node, graceful moves, rollbacks and the leader guard. The
lab tests (tests/lab/test_scheduler_lab.py) run the same service with real playbooks.
"""

from __future__ import annotations

import contextlib
import json

import pytest

from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.jobspec import parse_spec
from walle.lab.consul_standin import start_in_thread
from walle.naming import service_unit, timer_unit
from walle.service.executor import NodeInstances, Outcome
from walle.service.params import DEFAULT_DRAIN_S, drain_of, ports_meta
from walle.service.presence import DEFAULT_DOWN_GRACE
from walle.service.records import attempt_of, from_stored
from walle.service.scheduler import LostLeadership, Scheduler, SchedulerConfig

pytestmark = pytest.mark.consul

GIB = 1024 ** 3


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class RecordingExecutor:
    """Records what the scheduler asks for; `health` decides each placed instance's check."""

    def __init__(self, api: ConsulApi):
        self.api = api
        self.placed: list[tuple[str, str]] = []
        self.stopped: list[tuple[str, str]] = []
        self.regranted: list[str] = []
        self.health = "passing"
        self.fail_nodes: set[str] = set()
        self.units: dict[str, dict] = {}  # unit -> what `systemctl show` would say
        # what each node keeps: instance id -> its kind (manifest and units, until stopped)
        self.on_node: dict[str, dict[str, str]] = {}
        self.listed: list[list[str]] = []  # the nodes of each list_instances call
        self.replacing: list[str] = []  # keys placed as in-place replacements (drain first)
        self.drains: dict[str, float] = {}  # stopped key -> the drain it was stopped with

    def place(self, items, addresses, replacing=()):
        out = {}
        self.replacing += sorted(replacing)
        for alloc, spec in items:
            self.placed.append((alloc.key, alloc.node))
            if alloc.node in self.fail_nodes:
                out[alloc.key] = Outcome(False, f"node {alloc.node} unreachable")
                continue
            self.on_node.setdefault(alloc.node, {})[alloc.key] = spec.kind
            if spec.kind == "batch":  # place.yml started it: it runs until a test says not
                self.units[service_unit(alloc.job, alloc.slot)] = {
                    "ActiveState": "active", "InactiveExitTimestampMonotonic": "1"}
            if spec.service is not None:  # with the port and meta service_args gives it
                ports = dict(alloc.dynamic_ports)
                register_instance(self.api, alloc.node, alloc.key, spec.service.name,
                                  self.health, meta={"walle_job": alloc.job,
                                                     "walle_slot": str(alloc.slot),
                                                     "walle_digest": alloc.spec_digest,
                                                     "walle_runtime": alloc.runtime_digest,
                                                     **ports_meta(spec, ports)},
                                  port=spec.resolve_port(spec.service.port, ports) or 8080)
            out[alloc.key] = Outcome(True)
        return out

    def stop(self, allocs, jobs=None):
        for a in allocs:
            self.drains[a.key] = drain_of((jobs or {}).get(a.job))
            self.stopped.append((a.key, a.node))
            self.on_node.get(a.node, {}).pop(a.key, None)
            self.api.client.catalog.deregister(a.node, service_id=a.key)
        return {a.key: Outcome(True) for a in allocs}

    def stop_instances(self, instances, jobs=None):
        out = {}
        for job, slot, node in instances:
            self.stopped.append((f"{job}-{slot}", node))
            self.on_node.get(node, {}).pop(f"{job}-{slot}", None)
            self.api.client.catalog.deregister(node, service_id=f"{job}-{slot}")
            out[f"{job}-{slot}"] = Outcome(True)
        return out

    def probe_units(self, units):
        return {(node, unit): self.units[unit] for node, unit in units if unit in self.units}

    def list_instances(self, nodes):
        """Manifests and units of what each node keeps (a service or batch unit's state from
        `units`, default active; a cron job's timer active)."""
        self.listed.append(sorted(nodes))
        out = {}
        for node in nodes:
            if node in self.fail_nodes:
                continue
            units = {}
            for iid, kind in self.on_node.get(node, {}).items():
                job, _, slot = iid.rpartition("-")
                unit = (timer_unit if kind == "cron" else service_unit)(job, int(slot))
                units[unit] = self.units.get(unit, {}).get("ActiveState", "active")
            out[node] = NodeInstances(frozenset(self.on_node.get(node, {})), units)
        return out

    def regrant(self, items):
        self.regranted += [a.key for a, _ in items]
        return {a.key: Outcome(True) for a, _ in items}


def register_node(api: ConsulApi, name: str, address: str, status: str = "passing",
                  cpu: float = 4, memory: int = 8 * GIB, zone: str = "z1", gpus: int = 0,
                  meta: dict | None = None) -> None:
    body = {"Node": name, "Address": address,
            "NodeMeta": {"walle_cpu": str(cpu), "walle_memory": str(memory),
                         "walle_disk": str(100 * GIB), "walle_gpus": str(gpus),
                         "walle_zone": zone, **(meta or {})},
            "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status",
                      "Status": status}}
    status_code, answer = api.raw("put", "/v1/catalog/register", data=json.dumps(body))
    assert status_code == 200, answer


def register_instance(api: ConsulApi, node: str, sid: str, name: str, status: str,
                      meta: dict | None = None, port: int = 8080) -> None:
    body = {"Node": node, "Address": "", "SkipNodeUpdate": True,
            "Service": {"ID": sid, "Service": name, "Port": port, "Meta": meta or {}},
            "Check": {"CheckID": f"service:{sid}", "Name": "check", "Status": status,
                      "ServiceID": sid}}
    code, answer = api.raw("put", "/v1/catalog/register", data=json.dumps(body))
    assert code == 200, answer


def web_spec(count: int = 3, args: tuple[str, ...] = ("-m", "http.server", "8080"),
             cpu: str = "0.5-1", **extra):
    data = {
        "name": "web", "kind": "service", "count": count,
        "resources": {"cpu": cpu, "memory": "128M-256M"},
        "runtime": {"command": "/usr/bin/python3", "args": list(args)},
        "service": {"port": 8080},
        "health": {"type": "http", "path": "/"},
        "update": {"max_parallel": 1, "health_timeout": "5s"},
        **extra,
    }
    return parse_spec(data)


@contextlib.contextmanager
def three_nodes(tmp_path):
    """A stand-in with node1..3 registered: (api, the stand-in)."""
    standin = start_in_thread(data_dir=tmp_path / "consul", node_name="walle-test-server")
    host, port = standin.http_addr
    api = ConsulApi(ConsulConfig.from_env(addr=f"http://{host}:{port}"))
    for i, zone in enumerate(("z1", "z2", "z3"), start=1):
        register_node(api, f"node{i}", f"10.77.250.{10 + i}", zone=zone)
    try:
        yield api, standin
    finally:
        standin.stop()


@pytest.fixture
def cluster(tmp_path):
    with three_nodes(tmp_path) as (api, _):
        yield api


def make_scheduler(api: ConsulApi, clock: Clock, name: str = "s1",
                   executor: RecordingExecutor | None = None, usage_reader=None,
                   **config_args):
    """A scheduler holding the lock; `executor` shares the fake nodes of an earlier one."""
    executor = executor or RecordingExecutor(api)
    config = SchedulerConfig(name=name, inventory="unused", lock_delay=0, seed=7,
                             **config_args)
    scheduler = Scheduler(api, config, executor=executor, clock=clock,
                          usage_reader=usage_reader)
    assert scheduler.lock.acquire()
    return scheduler, executor


def records(api: ConsulApi) -> dict:
    _, stored = StateStore(api).allocs()
    return {f"{j}-{s}": a for (j, s), a in stored.items()}


def test_places_count_instances_spread_over_nodes_then_marks_them_running(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    assert StateStore(cluster).put_job(web_spec(), 0)
    s.step()
    assert sorted(k for k, _ in ex.placed) == ["web-0", "web-1", "web-2"]
    assert len({n for _, n in ex.placed}) == 3  # spread: one per node
    assert {a.state for a in records(cluster).values()} == {"pending"}
    report = s.step()  # the checks pass now
    assert sorted(report.running) == ["web-0", "web-1", "web-2"]
    assert {a.state for a in records(cluster).values()} == {"running"}
    assert s.step().plan.is_empty
    s.lock.step_down()


def test_a_new_leader_adopts_healthy_instances_without_restarting_them(cluster):
    clock = Clock()
    s1, ex1 = make_scheduler(cluster, clock, "s1")
    StateStore(cluster).put_job(web_spec(), 0)
    s1.step()
    s1.step()
    s1.lock.step_down()
    s2, ex2 = make_scheduler(cluster, clock, "s2")
    report = s2.step()
    assert ex2.placed == [] and ex2.stopped == []
    assert report.plan.is_empty
    s2.lock.step_down()


def test_pending_work_of_a_crashed_leader_is_finished_by_the_next(cluster):
    clock = Clock()
    s1, ex1 = make_scheduler(cluster, clock, "s1")
    ex1.fail_nodes = set()
    StateStore(cluster).put_job(web_spec(count=2), 0)
    # the first leader writes its intent, then "crashes" before any check passes
    ex1.health = "critical"
    s1.step()
    placed_before = dict(ex1.placed)
    s1.lock.step_down()
    s2, ex2 = make_scheduler(cluster, clock, "s2")
    s2.step()
    # the same instances are placed again on the same nodes (idempotent), nothing new
    assert dict(ex2.placed) == placed_before


def test_instances_on_a_dead_node_move_to_healthy_nodes(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=2), 0)  # a node with port 8080 free
    s.step()
    s.step()
    victim = records(cluster)["web-1"].node
    register_node(cluster, victim, "10.77.250.99", status="critical")
    ex.placed.clear()
    s.step()  # the down grace starts: the node's fence stops its copy meanwhile
    assert ex.placed == []
    clock.now += DEFAULT_DOWN_GRACE + 0.5
    s.step()
    moved = dict(ex.placed)
    assert list(moved) == ["web-1"] and moved["web-1"] != victim
    assert ex.stopped == []  # nothing can run on a dead node
    assert records(cluster)["web-1"].node == moved["web-1"]


def test_a_drained_node_is_emptied_gracefully(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=2), 0)
    s.step()
    s.step()
    node = records(cluster)["web-0"].node
    cluster.client.kv.put(f"walle/nodes/{node}/drain", "drain")
    ex.placed.clear()
    s.step()  # the new instance starts; the old one keeps running until it passes
    assert [k for k, _ in ex.placed] == ["web-0"]
    assert ex.stopped == []
    s.step()  # new passes -> pending->running; the previous instance is stopped
    s.step()
    assert ("web-0", node) in ex.stopped
    assert records(cluster)["web-0"].node != node


def test_scale_down_stops_the_highest_slots(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    store = StateStore(cluster)
    store.put_job(web_spec(count=3), 0)
    s.step()
    s.step()
    store.put_job(web_spec(count=1), store.job("web").modify_index)
    s.step()
    assert sorted(k for k, _ in ex.stopped) == ["web-1", "web-2"]
    assert sorted(records(cluster)) == ["web-0"]


def test_every_stop_leaves_the_pool_first_for_the_jobs_drain(cluster):
    """An in-place rolling update, scale-down, node drain and `walle stop` all hand the
    executor what it needs to take the instance out of the pool before its stop signal
    (stop.yml / place_instance.yml do the ordering: tests/unit/test_stop_drain_playbook.py)."""
    from walle.cli.main import main
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    store = StateStore(cluster)
    store.put_job(web_spec(count=3, stop={"drain": "7s"}), 0)
    s.step()
    s.step()
    # every node holds port 8080: a new version replaces each instance in place, which
    # must leave the pool and drain before its unit restarts
    update = web_spec(count=3, args=("-m", "http.server", "8080", "-b", "0.0.0.0"),
                      stop={"drain": "7s"})
    assert store.put_job(update, store.job("web").modify_index)
    ex.placed.clear()
    s.step()
    (replaced,) = [k for k, _ in ex.placed]
    assert ex.replacing == [replaced]
    for _ in range(6):
        s.step()
    assert sorted(ex.replacing) == ["web-0", "web-1", "web-2"]
    assert ex.stopped == []  # in place: nothing stopped, nothing placed twice

    store.put_job(web_spec(count=2, args=update.runtime.args,
                           stop={"drain": "7s"}), store.job("web").modify_index)
    s.step()  # scale-down
    assert ex.drains == {"web-2": 7.0}

    node = records(cluster)["web-0"].node
    cluster.client.kv.put(f"walle/nodes/{node}/drain", "drain")
    for _ in range(3):  # node drain: new instance elsewhere, then the old one stops
        s.step()
    assert ex.drains["web-0"] == 7.0 and ("web-0", node) in ex.stopped

    ex.drains.clear()
    assert main(["stop", "web", "--consul-addr", cluster.address]) == 0
    s.step()  # the job is gone: its instances drain for the default
    assert ex.drains == {"web-0": DEFAULT_DRAIN_S, "web-1": DEFAULT_DRAIN_S}


def test_a_failing_new_version_is_rolled_back(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    store = StateStore(cluster)
    good = web_spec(count=2)
    store.put_job(good, 0)
    s.step()
    s.step()
    bad = web_spec(count=2, args=("-m", "http.server", "9999"))
    current = store.job("web")
    assert store.put_job(bad, current.modify_index, previous=current)
    ex.health = "critical"
    s.step()  # replaces one instance (max_parallel 1) with the bad version
    replaced = [k for k, _ in ex.placed if k.startswith("web-")][-1]
    assert records(cluster)[replaced].version == bad.digest()
    clock.now += 6  # past health_timeout (5 s)
    report = s.step()
    assert report.rolled_back == ["web"]
    assert store.job("web").version == good.digest()
    ex.health = "passing"
    s.step()
    s.step()
    assert {a.version for a in records(cluster).values()} == {good.digest()}


def test_a_deposed_leader_cannot_write(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=1), 0)
    session = s.lock.session_id
    cluster.client.session.destroy(session)
    with pytest.raises(LostLeadership):
        s.step()
    assert records(cluster) == {}


def test_an_instance_left_on_a_returning_node_is_stopped(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=2), 0)
    s.step()
    s.step()
    here = {k: a.node for k, a in records(cluster).items()}
    elsewhere = next(n for n in ("node1", "node2", "node3") if n != here["web-0"])
    # the node that used to run web-0 comes back with its old registration
    register_instance(cluster, elsewhere, "web-0", "web", "passing")
    s.step()
    assert ("web-0", elsewhere) in ex.stopped
    assert ("web-0", here["web-0"]) not in ex.stopped
    assert records(cluster)["web-0"].node == here["web-0"]


def test_a_lost_instance_with_nowhere_to_go_is_reported_not_doubled(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=3), 0)  # port 8080 on every node
    s.step()
    s.step()
    victim = records(cluster)["web-1"].node
    register_node(cluster, victim, "10.77.250.99", status="critical")
    ex.placed.clear()
    assert s.step().plan.failures == ()  # held for the down grace: not being placed yet
    clock.now += s.config.node_down_grace + 1
    report = s.step()
    assert ex.placed == []
    (failure,) = report.plan.failures
    assert failure.job == "web" and "port 8080 in use" in failure.message


def test_a_deposed_leader_stops_acting_at_once(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=1), 0)
    cluster.client.session.destroy(s.lock.session_id)
    s._lead()  # returns as soon as the guarded write fails
    assert not s.lock.is_leader and s.lock.session_id is None
    assert records(cluster) == {}


def test_batch_instances_that_succeed_are_done_and_failures_are_retried(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    batch = parse_spec({"name": "etl", "kind": "batch", "count": 2, "retries": 2,
                        "resources": {"cpu": 0.1, "memory": "16M"},
                        "runtime": {"command": "/bin/true"}})
    StateStore(cluster).put_job(batch, 0)
    s.step()
    s.step()
    assert {a.state for a in records(cluster).values()} == {"running"}
    ex.units = {"walle-etl-0.service": {"ActiveState": "inactive", "Result": "success",
                                        "ExecMainStatus": "0"},
                "walle-etl-1.service": {"ActiveState": "failed", "Result": "exit-code",
                                        "ExecMainStatus": "3"}}
    clock.now += 6
    failed_on = records(cluster)["etl-1"].node
    report = s.step()
    assert report.finished == ["etl-0"]
    assert records(cluster)["etl-0"].state == "stopped"
    # the failed slot is placed again elsewhere; the finished one is not run again
    placed = [k for k, _ in ex.placed]
    assert placed.count("etl-0") == 1 and placed.count("etl-1") == 2
    assert records(cluster)["etl-1"].node != failed_on


# ----- disaster recovery: records rebuilt from what runs (walle.service.adopt) ---------------
def wipe_walle_state(api: ConsulApi) -> None:
    api.client.kv.delete("walle/", recurse=True)


def running_where(api: ConsulApi) -> dict[str, tuple[str, str]]:
    return {k: (a.node, a.state) for k, a in records(api).items()}


def run_web_then_lose_the_state(api: ConsulApi, clock: Clock, count: int = 3):
    s1, _ = make_scheduler(api, clock, "s1")
    StateStore(api).put_job(web_spec(count=count), 0)
    s1.step()
    s1.step()
    before = running_where(api)
    assert {state for _, state in before.values()} == {"running"}
    s1.lock.step_down()
    wipe_walle_state(api)
    return before


def test_after_a_wipe_a_resubmitted_job_adopts_its_running_instances(cluster):
    clock = Clock()
    before = run_web_then_lose_the_state(cluster, clock)
    s2, ex2 = make_scheduler(cluster, clock, "s2")
    s2.step()  # no job and no tombstone: the state looks lost, the instances keep running
    assert ex2.placed == [] and ex2.stopped == []
    assert StateStore(cluster).put_job(web_spec(), 0)  # the operator submits it again
    report = s2.step()
    assert ex2.placed == [] and ex2.stopped == []
    assert sorted(report.adopted) == sorted(f"{k}@{n}" for k, (n, _) in before.items())
    assert running_where(cluster) == before
    assert s2.step().plan.is_empty
    s2.lock.step_down()


def test_an_adopted_older_version_is_rolled_not_restarted_all_at_once(cluster):
    clock = Clock()
    before = run_web_then_lose_the_state(cluster, clock)
    s2, ex2 = make_scheduler(cluster, clock, "s2")
    newer = web_spec(args=("-m", "http.server", "8080", "--bind", "0.0.0.0"))
    StateStore(cluster).put_job(newer, 0)
    s2.step()
    assert ex2.stopped == []
    assert len(ex2.placed) == 1  # max_parallel 1: the normal rolling update
    versions = [a.version for a in records(cluster).values()]
    assert versions.count(newer.digest()) == 1 and len(versions) == len(before)


def test_a_stop_with_its_tombstone_still_stops_unrecorded_instances(cluster, capsys):
    from walle.cli.main import main
    clock = Clock()
    before = run_web_then_lose_the_state(cluster, clock)
    s2, ex2 = make_scheduler(cluster, clock, "s2")
    s2.step()
    assert ex2.stopped == []
    capsys.readouterr()
    assert main(["status", "--consul-addr", cluster.address]) == 0
    warning = capsys.readouterr().err
    assert "unclaimed" in warning and all(f"{k}@{n}" in warning for k, (n, _) in before.items())
    # the operator stops the job whose instances run unclaimed: `walle stop` leaves a tombstone
    assert main(["stop", "web", "--consul-addr", cluster.address]) == 0
    s2.step()
    assert sorted(ex2.stopped) == sorted((k, n) for k, (n, _) in before.items())
    assert ex2.placed == []


def test_walle_stop_of_a_running_job_stops_at_once_and_resubmitting_clears_the_tombstone(
        cluster):
    from walle.adapters.consul.tombstones import stopped_jobs
    from walle.cli.main import main
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=2), 0)
    s.step()
    s.step()
    assert main(["stop", "web", "--consul-addr", cluster.address]) == 0
    assert stopped_jobs(cluster) == {"web"}
    s.step()
    assert sorted(k for k, _ in ex.stopped) == ["web-0", "web-1"]
    assert records(cluster) == {}
    assert main(["run", "examples/web.yml", "--consul-addr", cluster.address]) == 0
    assert stopped_jobs(cluster) == frozenset()


def test_an_old_backup_is_reconciled_with_what_runs(cluster):
    """Records restored from an old backup: web-0's record points at a node where it no longer
    runs (it runs elsewhere now), web-1's at a node where nothing runs any more."""
    clock = Clock()
    s1, ex1 = make_scheduler(cluster, clock, "s1")
    StateStore(cluster).put_job(web_spec(count=2), 0)
    s1.step()
    s1.step()
    now = records(cluster)
    old = {"web-0": now["web-0"].node, "web-1": now["web-1"].node}
    free = next(n for n in ("node1", "node2", "node3") if n not in old.values())
    # since the backup: web-0 moved to the free node; web-1 vanished (its node was rebuilt)
    cluster.client.catalog.deregister(old["web-0"], service_id="web-0")
    register_instance(cluster, free, "web-0", "web", "passing",
                      meta={"walle_job": "web", "walle_slot": "0",
                            "walle_digest": web_spec(count=2).digest()})
    cluster.client.catalog.deregister(old["web-1"], service_id="web-1")
    s1.lock.step_down()
    s2, ex2 = make_scheduler(cluster, clock, "s2")
    report = s2.step()
    assert report.adopted == [f"web-0@{free}"]
    assert ex2.stopped == [] and [k for k, _ in ex2.placed] == []
    assert records(cluster)["web-0"].node == free
    clock.now += 31  # web-1 stays registered nowhere: its record is lost, the slot re-placed
    s2.step()
    s2.step()
    assert [k for k, _ in ex2.placed] == ["web-1"]
    assert {a.state for a in records(cluster).values()} == {"running"}
    assert ex2.stopped == []


def test_two_unrecorded_instances_of_one_slot_are_never_both_kept(cluster):
    clock = Clock()
    before = run_web_then_lose_the_state(cluster, clock, count=1)
    (node, _), = before.values()
    other = next(n for n in ("node1", "node2", "node3") if n != node)
    register_instance(cluster, other, "web-0", "web", "passing",
                      meta={"walle_job": "web", "walle_slot": "0",
                            "walle_digest": web_spec(count=1).digest()})
    s2, ex2 = make_scheduler(cluster, clock, "s2")
    StateStore(cluster).put_job(web_spec(count=1), 0)
    s2.step()
    assert ex2.placed == []
    assert ex2.stopped == [("web-0", max(node, other))]
    assert records(cluster)["web-0"].node == min(node, other)


def test_an_adopted_version_differing_only_in_resources_is_updated_in_place(cluster):
    clock = Clock()
    before = run_web_then_lose_the_state(cluster, clock)
    s2, ex2 = make_scheduler(cluster, clock, "s2")
    StateStore(cluster).put_job(web_spec(cpu="0.5-2"), 0)  # the same runtime, more CPU
    s2.step()
    assert ex2.placed == [] and ex2.stopped == []
    assert sorted(ex2.regranted) == sorted(before)
    assert running_where(cluster) == before


# ----- chaos findings (bench/chaos.py, docs/benchmarks.md "Findings") -------------------------
def registered_on(api: ConsulApi, sid: str) -> list[str]:
    _, nodes = api.client.catalog.nodes()
    out = []
    for n in nodes:
        _, info = api.client.catalog.node(n["Node"])
        if info and sid in (info.get("Services") or {}):
            out.append(n["Node"])
    return sorted(out)


def test_a_registration_an_agent_restart_dropped_is_restored_where_the_instance_runs(cluster):
    """Finding 1: `systemctl restart` of a node's agent forgot web-0's registration while its
    unit kept running. The record is healed by placing the instance again where it runs
    (idempotent: the unit keeps its process, the registration comes back), never by starting
    a second copy elsewhere while the first still runs."""
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=2), 0)
    s.step()
    s.step()
    node = records(cluster)["web-0"].node
    cluster.client.catalog.deregister(node, service_id="web-0")  # the agent restart
    ex.placed.clear()
    s.step()
    assert ex.placed == []  # within MISSING_GRACE: an agent restart re-registers by itself
    clock.now += 31
    s.step()
    s.step()
    assert ex.placed == [("web-0", node)]
    assert registered_on(cluster, "web-0") == [node]
    assert (records(cluster)["web-0"].node, records(cluster)["web-0"].state) == (node, "running")
    assert ex.stopped == []


def test_a_new_leader_records_batch_work_that_ran_instead_of_running_it_again(cluster):
    """Finding 2: the leader placed 4 batch instances and died before recording any outcome.
    By the time the next leader resumes, etl-0 finished (and systemd unloaded its unit: only
    the manifest shows it ran), etl-1 still runs, etl-2 failed, etl-3 never started (the
    playbook died first). Only etl-3 is placed; the others' records follow their units."""
    clock = Clock()
    s1, ex = make_scheduler(cluster, clock, "s1")
    batch = parse_spec({"name": "etl", "kind": "batch", "count": 4, "retries": 2,
                        "resources": {"cpu": 0.1, "memory": "16M"},
                        "runtime": {"command": "/bin/true"}})
    StateStore(cluster).put_job(batch, 0)
    s1.step()
    assert {a.state for a in records(cluster).values()} == {"pending"}
    s1.lock.step_down()  # the leader dies before it records any outcome
    where = {k: a.node for k, a in records(cluster).items()}
    ex.on_node[where["etl-3"]].pop("etl-3")  # its playbook never got to it
    ex.units = {
        "walle-etl-0.service": {"ActiveState": "inactive", "Result": "success",
                                "ExecMainStatus": "0", "InactiveExitTimestampMonotonic": "0"},
        "walle-etl-1.service": {"ActiveState": "active", "Result": "success",
                                "ExecMainStatus": "0",
                                "InactiveExitTimestampMonotonic": "1234"},
        "walle-etl-2.service": {"ActiveState": "failed", "Result": "exit-code",
                                "ExecMainStatus": "3",
                                "InactiveExitTimestampMonotonic": "1234"},
        "walle-etl-3.service": {"ActiveState": "inactive", "Result": "success",
                                "ExecMainStatus": "0", "InactiveExitTimestampMonotonic": "0"},
    }
    ex.placed.clear()
    s2, _ = make_scheduler(cluster, clock, "s2", executor=ex)
    report = s2.step()
    assert ("etl-3", where["etl-3"]) in ex.placed
    assert [k for k, _ in ex.placed].count("etl-0") == 0
    assert [k for k, _ in ex.placed].count("etl-1") == 0
    assert report.finished == ["etl-0"]
    state = {k: a.state for k, a in records(cluster).items()}
    assert state["etl-0"] == "stopped" and state["etl-1"] == "running"
    assert "exit-code" in report.failed["etl-2"]
    # the failed one is retried like any failure (elsewhere); the done one never again
    s2.step()
    assert [k for k, _ in ex.placed].count("etl-0") == 0


def test_a_pending_batch_a_new_leader_meets_on_a_node_that_is_down_is_settled_not_done(
        cluster):
    """Chaos, 2026-12-02 (chaos-b2-0/1: recorded stopped, never ran): the leader placed a
    batch (pending) and died before its playbook started the unit; the next leader's first
    step saw the node down (the stand-in had just restarted), so the record was not among the
    pending batch work to settle. When the node was back, the record was promoted to running
    like a placement of this leader, and the 5 s probe read the never-started unit as done."""
    clock = Clock()
    s1, ex = make_scheduler(cluster, clock, "s1")
    StateStore(cluster).put_job(etl_spec(), 0)
    s1.step()
    assert records(cluster)["etl-0"].state == "pending"
    s1.lock.step_down()
    node = records(cluster)["etl-0"].node
    ex.on_node[node].pop("etl-0")  # its playbook never got to start it
    never = {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0",
             "InactiveExitTimestampMonotonic": "0"}
    ex.units["walle-etl-0.service"] = never
    register_node(cluster, node, "10.77.250.99", status="critical")  # down at the takeover
    ex.placed.clear()
    s2, _ = make_scheduler(cluster, clock, "s2", executor=ex)
    s2.step()
    register_node(cluster, node, "10.77.250.99", status="passing")  # back within the grace
    for _ in range(3):
        clock.now += 6
        report = s2.step()
        assert "etl-0" not in report.finished
    assert records(cluster)["etl-0"].state in ("pending", "running")
    assert ("etl-0", node) in ex.placed  # settled: it never started, so it was placed


def test_a_pending_batch_on_a_node_that_does_not_answer_is_not_started_again(cluster):
    clock = Clock()
    s1, ex = make_scheduler(cluster, clock, "s1")
    batch = parse_spec({"name": "etl", "kind": "batch", "count": 1,
                        "resources": {"cpu": 0.1, "memory": "16M"},
                        "runtime": {"command": "/bin/true"}})
    StateStore(cluster).put_job(batch, 0)
    s1.step()
    s1.lock.step_down()
    node = records(cluster)["etl-0"].node
    ex.fail_nodes = {node}  # the node is up in Consul but does not answer us
    ex.placed.clear()
    s2, _ = make_scheduler(cluster, clock, "s2", executor=ex)
    s2.step()
    s2.step()
    assert ex.placed == [] and records(cluster)["etl-0"].state == "pending"
    ex.fail_nodes = set()  # it answers: the unit finished meanwhile
    ex.units = {"walle-etl-0.service": {"ActiveState": "inactive", "Result": "success",
                                        "ExecMainStatus": "0"}}
    clock.now += 6
    report = s2.step()
    assert report.finished == ["etl-0"] and ex.placed == []


def commit_as_the_node(api: ConsulApi, key: str, node: str, attempt: str) -> None:
    """What walle-batch-commit writes when the job on `node` exited 0."""
    job, _, slot = key.rpartition("-")
    assert api.client.kv.put(f"walle/done/{job}/{slot}",
                             json.dumps({"node": node, "attempt": attempt, "at": 1.0}))


def attempt_of_record(api: ConsulApi, key: str) -> str:
    return attempt_of(from_stored(records(api)[key]).alloc)


def etl_spec(count: int = 1):
    return parse_spec({"name": "etl", "kind": "batch", "count": count, "retries": 3,
                       "resources": {"cpu": 0.1, "memory": "16M"},
                       "runtime": {"command": "/bin/true"}})


def etl_running(api: ConsulApi):
    """One batch instance placed and running: (scheduler, executor, its node)."""
    s, ex = make_scheduler(api, Clock())
    StateStore(api).put_job(etl_spec(), 0)
    s.step()
    s.step()
    assert records(api)["etl-0"].state == "running"
    return s, ex, records(api)["etl-0"].node


def test_a_batch_whose_node_committed_then_died_is_done_not_run_again(cluster):
    """CI's chaos finding: chaos-b4-0 finished on node1, node1 was killed 2 s later, before
    the leader's next probe; the slot was re-placed and the work ran twice. The node's commit
    (walle/done/etl/0, written by the unit's ExecStopPost as the job exits 0) is read before
    anything is re-placed: the slot is done, and the commit is consumed."""
    s, ex, node = etl_running(cluster)
    commit_as_the_node(cluster, "etl-0", node, attempt_of_record(cluster, "etl-0"))
    register_node(cluster, node, "10.77.250.99", status="critical")  # killed right after
    ex.placed.clear()
    report = s.step()
    s.step()
    assert ex.placed == []
    assert report.finished == ["etl-0"]
    assert records(cluster)["etl-0"].state == "stopped"
    assert cluster.client.kv.get("walle/done/etl/0")[1] is None


def test_a_late_commit_of_an_earlier_placement_does_not_end_the_current_one(cluster):
    s, ex, node = etl_running(cluster)
    other = next(n for n in ("node1", "node2", "node3") if n != node)
    commit_as_the_node(cluster, "etl-0", other, "12.000000")  # an old run elsewhere
    report = s.step()
    assert report.finished == []
    assert records(cluster)["etl-0"].state == "running"
    assert cluster.client.kv.get("walle/done/etl/0")[1] is None  # stale: deleted unused
    # the current placement's own commit ends it, without a probe of its node
    commit_as_the_node(cluster, "etl-0", node, attempt_of_record(cluster, "etl-0"))
    assert s.step().finished == ["etl-0"]


def test_gpu_instances_get_their_own_gpus_which_a_new_leader_keeps(cluster):
    """GPUs one by one: two 1-GPU instances on the only GPU node (2 GPUs) hold index 0 and 1
    in their records; a third cannot be placed; after a leader change nothing moves."""
    register_node(cluster, "gpu1", "10.77.250.21", zone="z1", gpus=2)
    clock = Clock()
    s1, ex = make_scheduler(cluster, clock, "s1")
    StateStore(cluster).put_job(parse_spec({
        "name": "train", "kind": "service", "count": 3,
        "resources": {"cpu": 0.5, "memory": "64M", "gpus": 1},
        "runtime": {"command": "/usr/bin/python3"}}), 0)
    report = s1.step()
    stored = {k: (a.node, a.extra.get("gpu_indices")) for k, a in records(cluster).items()}
    assert sorted(stored.values()) == [("gpu1", [0]), ("gpu1", [1])]
    assert any("gpus" in f.message for f in report.plan.failures)
    s1.lock.step_down()
    ex.placed.clear()
    s2, _ = make_scheduler(cluster, clock, "s2", executor=ex)
    s2.step()
    s2.step()
    assert {k: (a.node, a.extra.get("gpu_indices")) for k, a in records(cluster).items()} \
        == stored
    assert ex.placed == [(k, "gpu1") for k in sorted(stored)]  # resumed in place, same GPUs


def cron_spec(count: int = 1):
    return parse_spec({"name": "tick", "kind": "cron", "count": count,
                       "schedule": "*-*-* *:*:00",
                       "resources": {"cpu": 0.1, "memory": "16M"},
                       "runtime": {"command": "/bin/true"}})


def test_a_cron_copy_left_on_a_node_that_comes_back_is_stopped(cluster):
    """Finding 4: the node running tick-0 died, the slot moved; the node boots with its timer
    still there. Cron registers nothing in Consul, so the node itself is asked."""
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(cron_spec(), 0)
    s.step()
    assert ex.listed == [["node1", "node2", "node3"]]  # a new leader lists every ready node
    s.step()
    victim = records(cluster)["tick-0"].node
    register_node(cluster, victim, "10.77.250.99", status="critical")
    s.step()
    clock.now += DEFAULT_DOWN_GRACE + 0.5  # moved once the down grace is over
    s.step()
    moved_to = records(cluster)["tick-0"].node
    assert moved_to != victim and "tick-0" in ex.on_node[victim]
    # an instance of a job Consul does not know, with no tombstone: unclaimed, kept
    ex.on_node[victim]["gone-0"] = "cron"
    ex.listed.clear()
    s.step()
    assert ex.listed == []  # nothing came back: nobody is asked
    register_node(cluster, victim, "10.77.250.99", status="passing")
    s.step()
    assert ex.listed == [[victim]]
    assert ("tick-0", victim) in ex.stopped and ("tick-0", moved_to) not in ex.stopped
    assert ("gone-0", victim) not in ex.stopped
    assert records(cluster)["tick-0"].node == moved_to
    s.step()
    assert ex.listed == [[victim]]  # once per return, not every step


def test_a_node_back_with_a_copy_of_a_frozen_job_keeps_it(cluster):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(cron_spec(), 0)
    s.step()
    s.step()
    victim = records(cluster)["tick-0"].node
    register_node(cluster, victim, "10.77.250.99", status="critical")
    s.step()
    cluster.client.kv.put("walle/allocs/tick/0", "{not json")  # unreadable: hands off
    register_node(cluster, victim, "10.77.250.99", status="passing")
    s.step()
    assert ("tick-0", victim) not in ex.stopped
