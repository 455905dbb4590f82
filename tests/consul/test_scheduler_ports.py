"""Dynamic ports against the Consul stand-in: the demo's job (examples/web.yml, one dynamic
port) places more instances than nodes, each registration (and so DNS SRV) carries the
instance's own port, a new leader keeps every port (from the slot records, or from the
registrations when the records are gone), and a node whose range is full is refused with
that reason in `walle plan --explain`."""

from __future__ import annotations

from dataclasses import replace

import dns.message
import dns.query
import dns.rdatatype
import pytest
from test_scheduler_service import Clock, make_scheduler, records, register_node, three_nodes

from walle.adapters.consul import StateStore
from walle.adapters.consul.services import service_health
from walle.cli.main import main
from walle.jobspec import load_spec_file

pytestmark = pytest.mark.consul


@pytest.fixture
def pool(tmp_path):
    """A stand-in with 3 nodes: (api, its DNS address)."""
    with three_nodes(tmp_path) as (api, standin):
        yield api, standin.dns_addr


def web(count: int):
    return replace(load_spec_file("examples/web.yml"), count=count)


def http_ports(api) -> dict[str, tuple[str, int]]:
    """The slot records' ports (as stored: the service layer's `dynamic_ports` field)."""
    return {key: (a.node, a.extra["dynamic_ports"]["http"]) for key, a in records(api).items()}


def srv_ports(dns_addr, name: str) -> list[tuple[str, int]]:
    query = dns.message.make_query(f"{name}.service.consul", "SRV")
    answer = dns.query.tcp(query, dns_addr[0], port=dns_addr[1], timeout=3)  # all answers
    return sorted((r.target.to_text().split(".")[0], r.port) for rrset in answer.answer
                  if rrset.rdtype == dns.rdatatype.SRV for r in rrset)


def test_six_instances_on_three_nodes_each_register_and_resolve_with_their_own_port(pool):
    api, dns_addr = pool
    clock = Clock()
    s, ex = make_scheduler(api, clock)
    assert StateStore(api).put_job(web(6), 0)
    s.step()
    s.step()
    held = http_ports(api)
    assert len(held) == 6 and {a.state for a in records(api).values()} == {"running"}
    assert len(set(held.values())) == 6  # never two holders of one port on a node
    assert all(20000 <= port <= 32000 for _, port in held.values())
    _, instances = service_health(api, "web")
    assert {i.id: (i.node, i.port) for i in instances} == held
    assert srv_ports(dns_addr, "web") == sorted(held.values())
    # a new leader keeps every instance where it is, on its port: nothing placed or re-granted
    s.lock.step_down()
    s2, ex2 = make_scheduler(api, clock, "s2", executor=ex)
    ex.placed.clear()
    report = s2.step()
    assert report.plan.is_empty and ex.placed == []
    assert http_ports(api) == held
    s2.lock.step_down()


def test_a_new_leader_without_slot_records_adopts_the_registered_ports(pool):
    api, _ = pool
    clock = Clock()
    s, ex = make_scheduler(api, clock)
    StateStore(api).put_job(web(4), 0)
    s.step()
    s.step()
    held = http_ports(api)
    s.lock.step_down()
    api.client.kv.delete("walle/allocs/", recurse=True)  # a lost or restored-too-old state
    assert records(api) == {}
    s2, _ = make_scheduler(api, clock, "s2", executor=ex)
    ex.placed.clear()
    s2.step()
    s2.step()
    assert ex.placed == [] and http_ports(api) == held
    s2.lock.step_down()


def test_a_node_whose_range_is_full_is_refused_with_that_reason(pool, capsys):
    api, _ = pool
    for i in (1, 2, 3):  # two ports per node: six instances fit, a seventh does not
        register_node(api, f"node{i}", f"10.77.250.{10 + i}",
                      meta={"walle_port_range": "30000-30001"})
    clock = Clock()
    s, _ = make_scheduler(api, clock)
    s.publish_defaults()
    StateStore(api).put_job(web(7), 0)
    report = s.step()
    (failure,) = report.plan.failures
    assert failure.slots == (6,) and "3 nodes: port range 30000-30001 full" in failure.message
    assert sorted(port for _, port in http_ports(api).values()) == [30000, 30000, 30000,
                                                                   30001, 30001, 30001]
    code = main(["plan", "web", "--explain", "--consul-addr", api.address])
    out = capsys.readouterr().out
    assert code == 1 and "port range 30000-30001 full" in out, out
    s.lock.step_down()


def test_a_lost_instance_moves_to_a_node_that_already_runs_one(pool):
    """What the static port forbade (issue 11): 3 instances on 3 nodes, one node dies, and
    its instance moves next to another one, on a port of its own."""
    api, _ = pool
    clock = Clock()
    s, _ = make_scheduler(api, clock, node_down_grace=0)
    StateStore(api).put_job(web(3), 0)
    s.step()
    s.step()
    victim = records(api)["web-1"].node
    assert len({node for node, _ in http_ports(api).values()}) == 3  # spread first
    register_node(api, victim, "10.77.250.99", status="critical")
    clock.now += 1
    report = s.step()
    assert not report.plan.failures
    s.step()
    held = http_ports(api)
    assert held["web-1"][0] != victim and {a.state for a in records(api).values()} == {"running"}
    assert len({node for node, _ in held.values()}) == 2 and len(set(held.values())) == 3
    s.lock.step_down()
