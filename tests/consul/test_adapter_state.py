"""Walle's state store on Consul KV/txn, with expected values from the KV, txn and session API
docs (https://developer.hashicorp.com/consul/api-docs/kv, /txn, /session)."""

from __future__ import annotations

import pytest

from walle.adapters.consul import Allocation, ConsulApi, ConsulConfig, KvOp, LeaderLock, StateStore
from walle.jobspec.model import JobSpec, Range, Resources, Runtime

pytestmark = pytest.mark.consul


@pytest.fixture
def api(consul_addr):
    return ConsulApi(ConsulConfig.from_env(consul_addr, env={}))


def job(name: str, count: int = 1) -> JobSpec:
    return JobSpec(name=name, kind="service", count=count,
                   resources=Resources(cpu=Range(0.5, 1.0), memory=Range(2**27, 2**28)),
                   runtime=Runtime(kind="exec", command="/bin/sleep", args=("600",)))


def test_job_create_is_cas_0_and_updates_need_the_current_index(api, unique):
    store = StateStore(api)
    spec = job(unique("web"))
    assert store.put_job(spec, 0) is True
    assert store.put_job(spec, 0) is False  # cas=0: only if the key does not exist
    stored = store.job(spec.name)
    assert stored.version == spec.digest() and stored.spec["name"] == spec.name
    newer = job(spec.name, count=3)
    assert store.put_job(newer, stored.modify_index + 1000) is False  # stale/wrong index
    assert store.put_job(newer, stored.modify_index) is True
    again = store.job(spec.name)
    assert again.spec["count"] == 3 and again.modify_index > stored.modify_index
    assert store.put_job(spec, stored.modify_index) is False  # the old index is now stale
    assert store.delete_job(spec.name, stored.modify_index) is False
    assert store.delete_job(spec.name, again.modify_index) is True
    assert store.job(spec.name) is None


def test_txn_is_all_or_nothing(api, consul_client, unique):
    store = StateStore(api)
    fresh, taken = unique("walle-test/fresh"), unique("walle-test/taken")
    consul_client.kv.put(taken, "x")
    result = store.txn([KvOp("cas", fresh, b"1", index=0), KvOp("cas", taken, b"2", index=0)])
    assert not result.ok and result.applied_ops == 0
    assert [e.op_index for e in result.errors] == [1]
    assert consul_client.kv.get(fresh)[1] is None  # rolled back
    assert consul_client.kv.get(taken)[1]["Value"] == b"x"
    consul_client.kv.delete(taken)


def test_only_the_lock_holder_writes_allocations(api, consul_client, unique):
    store = StateStore(api)
    name = unique("db")
    lock = LeaderLock(api, name=unique("leader"), lock_delay=0)
    # The guard checks the real leader key, so use a lock on it only if free; else skip.
    if not lock.acquire():
        pytest.skip("walle/leader is held by someone else on this Consul")
    try:
        alloc = Allocation(job=name, slot=0, node="node1", state="running", version="v1")
        assert store.write_allocs([alloc], session=lock.session_id).ok
        _, allocs = store.allocs(name)
        assert allocs[(name, 0)].node == "node1"

        stranger = consul_client.session.create(name=unique("stranger"), lock_delay=0)
        moved = Allocation(job=name, slot=1, node="node2", state="running")
        denied = store.write_allocs([moved], session=stranger)
        assert not denied.ok and denied.lost_leadership
        consul_client.session.destroy(stranger)

        deposed = lock.session_id
        consul_client.session.destroy(deposed)  # e.g. invalidated by a failed node check
        stale = store.write_allocs([moved], session=deposed)
        assert not stale.ok and stale.lost_leadership
        _, allocs = store.allocs(name)
        assert set(allocs) == {(name, 0)}  # nothing half-written
    finally:
        lock.step_down()
        consul_client.kv.delete(f"walle/allocs/{name}/", recurse=True)


def test_alloc_updates_are_cas(api, consul_client, unique):
    store = StateStore(api)
    name = unique("cas")
    lock = LeaderLock(api, name=unique("leader"), lock_delay=0)
    if not lock.acquire():
        pytest.skip("walle/leader is held by someone else on this Consul")
    try:
        first = Allocation(job=name, slot=0, node="node1", state="pending")
        assert store.write_allocs([first], session=lock.session_id).ok
        _, allocs = store.allocs(name)
        current = allocs[(name, 0)]
        running = Allocation(name, 0, "node1", "running", modify_index=current.modify_index)
        assert store.write_allocs([running], session=lock.session_id).ok
        # A second writer holding the old index loses.
        lost = store.write_allocs([Allocation(name, 0, "node9", "running",
                                              modify_index=current.modify_index)],
                                  session=lock.session_id)
        assert not lost.ok and not lost.lost_leadership and lost.errors[0].op_index == 0
        _, allocs = store.allocs(name)
        assert allocs[(name, 0)].state == "running" and allocs[(name, 0)].node == "node1"
    finally:
        lock.step_down()
        consul_client.kv.delete(f"walle/allocs/{name}/", recurse=True)


def test_a_write_answers_the_new_modify_index_so_the_writer_can_cas_again(api, consul_client,
                                                                          unique):
    # api-docs/txn.mdx: set/cas ops return the entry (without its value) in Results
    store = StateStore(api)
    name = unique("idx")
    lock = LeaderLock(api, name=unique("leader"), lock_delay=0)
    if not lock.acquire():
        pytest.skip("walle/leader is held by someone else on this Consul")
    try:
        result = store.write_allocs([Allocation(name, 0, "node1", "pending")],
                                    session=lock.session_id)
        _, allocs = store.allocs(name)
        stored = allocs[(name, 0)].modify_index
        assert result.indexes[f"walle/allocs/{name}/0"] == stored
        again = store.write_allocs([Allocation(name, 0, "node1", "running",
                                               modify_index=stored)], session=lock.session_id)
        assert again.ok
    finally:
        lock.step_down()
        consul_client.kv.delete(f"walle/allocs/{name}/", recurse=True)
