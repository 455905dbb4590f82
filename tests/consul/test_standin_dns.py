"""DNS interface, from https://developer.hashicorp.com/consul/docs/services/discovery/dns-static-lookups
and .../docs/services/discovery/dns-overview: A and SRV for [tag.]name.service.consul, RFC 2782
names, node names; only instances without critical checks; NXDOMAIN with SOA otherwise."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

import consul

pytestmark = pytest.mark.consul


def _ask(addr: tuple[str, int], name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, addr[0], port=addr[1], timeout=3)


def _records(resp: dns.message.Message, rdtype) -> list:
    return [r for rrset in resp.answer if rrset.rdtype == rdtype for r in rrset]


@pytest.fixture
def web(consul_client, unique):
    """A passing service with a TTL check: (name, port)."""
    name = unique("web")
    consul_client.agent.service.register(name, port=8123, tags=["primary"],
                                         check=consul.Check.ttl("60s"))
    consul_client.agent.check.ttl_pass(f"service:{name}")
    yield name, 8123
    consul_client.agent.service.deregister(name)


def test_srv_answers_port_and_target_with_address_in_additional(consul_dns, web):
    name, port = web
    resp = _ask(consul_dns, f"{name}.service.consul", "SRV")
    (srv,) = _records(resp, dns.rdatatype.SRV)
    assert srv.port == port
    assert ".node." in srv.target.to_text() and srv.target.to_text().endswith(".consul.")
    assert any(rrset.name == srv.target and rrset.rdtype == dns.rdatatype.A
               for rrset in resp.additional)
    # dns docs: TTLs default to 0.
    assert all(rrset.ttl == 0 for rrset in resp.answer)


def test_a_record_tag_and_rfc2782_forms(consul_dns, web):
    name, port = web
    assert _records(_ask(consul_dns, f"{name}.service.consul", "A"), dns.rdatatype.A)
    assert _records(_ask(consul_dns, f"primary.{name}.service.consul", "A"), dns.rdatatype.A)
    (srv,) = _records(_ask(consul_dns, f"_{name}._tcp.service.consul", "SRV"),
                      dns.rdatatype.SRV)
    assert srv.port == port
    (srv,) = _records(_ask(consul_dns, f"_{name}._primary.service.consul", "SRV"),
                      dns.rdatatype.SRV)
    assert srv.port == port
    assert _ask(consul_dns, f"other.{name}.service.consul", "A").rcode() == dns.rcode.NXDOMAIN


def test_lookup_is_case_insensitive_and_works_over_tcp(consul_dns, web):
    name, port = web
    resp = _ask(consul_dns, f"{name.upper()}.SERVICE.CONSUL", "SRV", tcp=True)
    assert [r.port for r in _records(resp, dns.rdatatype.SRV)] == [port]


def test_unknown_name_is_nxdomain_with_soa(consul_dns, unique):
    resp = _ask(consul_dns, f"{unique('nope')}.service.consul", "A")
    assert resp.rcode() == dns.rcode.NXDOMAIN
    assert [rrset.rdtype for rrset in resp.authority] == [dns.rdatatype.SOA]


def test_node_lookup(consul_client, consul_dns):
    node = consul_client.agent.self()["Config"]["NodeName"]
    _, info = consul_client.catalog.node(node)
    (a,) = _records(_ask(consul_dns, f"{node}.node.consul", "A"), dns.rdatatype.A)
    assert a.address == info["Node"]["Address"]


def test_critical_check_removes_the_instance(consul_client, consul_dns, web):
    name, _ = web
    consul_client.agent.check.ttl_fail(f"service:{name}")
    assert _ask(consul_dns, f"{name}.service.consul", "SRV").rcode() == dns.rcode.NXDOMAIN
    consul_client.agent.check.ttl_warn(f"service:{name}")
    # warning is not critical: still answered (only_passing defaults to false).
    assert _records(_ask(consul_dns, f"{name}.service.consul", "SRV"), dns.rdatatype.SRV)


def test_maintenance_hides_from_dns(consul_client, consul_dns, web):
    name, _ = web
    consul_client.agent.service.maintenance(name, "true")
    assert _ask(consul_dns, f"{name}.service.consul", "A").rcode() == dns.rcode.NXDOMAIN
    consul_client.agent.service.maintenance(name, "false")
    assert _records(_ask(consul_dns, f"{name}.service.consul", "A"), dns.rdatatype.A)


def test_node_lookup_answers_meta_as_txt(consul_addr, consul_client, consul_dns, unique):
    import requests

    node = unique("meta")
    body = {"Node": node, "Address": "10.77.9.10", "NodeMeta": {"walle_cpu": "8"}}
    requests.put(f"http://{consul_addr}/v1/catalog/register", json=body, timeout=5)
    try:
        resp = _ask(consul_dns, f"{node}.node.consul", "TXT")
        texts = [b"".join(r.strings) for r in _records(resp, dns.rdatatype.TXT)]
        assert b"walle_cpu=8" in texts  # dns-static-lookups: node meta as TXT records
    finally:
        consul_client.catalog.deregister(node)


def test_srv_weight_follows_the_instance_health(consul_client, consul_dns, unique):
    """docs/services/discovery/dns-static-lookups (SRV) and agent/service.mdx Weights:
    the SRV weight is Weights.Passing while the instance passes and Weights.Warning while
    one of its checks warns."""
    name = unique("weighted")
    consul_client.agent.service.register(name, port=8124, check=consul.Check.ttl("60s"),
                                         weights={"passing": 10, "warning": 3})
    try:
        consul_client.agent.check.ttl_pass(f"service:{name}")
        (srv,) = _records(_ask(consul_dns, f"{name}.service.consul", "SRV"),
                          dns.rdatatype.SRV)
        assert srv.weight == 10
        consul_client.agent.check.ttl_warn(f"service:{name}")
        (srv,) = _records(_ask(consul_dns, f"{name}.service.consul", "SRV"),
                          dns.rdatatype.SRV)
        assert srv.weight == 3
    finally:
        consul_client.agent.service.deregister(name)


def test_udp_answer_limit_applies_only_without_edns(consul_client, consul_dns, unique):
    """Consul's trimUDPResponse: udp_answer_limit (3) cuts a plain 512-byte UDP answer; a query
    with EDNS and a larger buffer (HAProxy's resolvers send one) gets every instance that fits
    the buffer, so a load balancer's server-template sees a 6-instance service whole."""
    name = unique("many")
    ids = [f"{name}-{i}" for i in range(6)]
    for i, sid in enumerate(ids):
        consul_client.agent.service.register(name, service_id=sid, port=21000 + i)
    try:
        plain = _records(_ask(consul_dns, f"_{name}._tcp.service.consul", "SRV"),
                         dns.rdatatype.SRV)
        assert len(plain) == 3
        query = dns.message.make_query(f"_{name}._tcp.service.consul", "SRV", use_edns=0,
                                       payload=4096)
        resp = dns.query.udp(query, consul_dns[0], port=consul_dns[1], timeout=3)
        assert sorted(r.port for r in _records(resp, dns.rdatatype.SRV)) == \
            list(range(21000, 21006))
        assert len(resp.additional) >= 1  # the targets' A records still come along
        assert not resp.flags & dns.flags.TC
    finally:
        for sid in ids:
            consul_client.agent.service.deregister(sid)
