"""?filter= on every endpoint whose Consul documentation lists it, with the documented
selectors: https://developer.hashicorp.com/consul/api-docs/features/filtering ("Filtering
Examples"), .../api-docs/catalog (List Nodes, List Services, List Nodes for Service, List
Services for Node: "Filtering"), .../api-docs/health (node, checks, service, state) and
.../api-docs/agent/service, .../agent/check (List Services, List Checks). An invalid expression
fails the request: Consul answers 500 "Failed to create boolean expression evaluator"
(hashicorp/consul#7338, #9441)."""

from __future__ import annotations

import pytest
import requests

import consul

pytestmark = pytest.mark.consul


@pytest.fixture
def two(consul_client, unique):
    """Two instances of one service on the agent's node: `<name>-qa` (Meta env=qa, tag qa,
    check passing) and `<name>-prod` (env=production, tag prod, check critical)."""
    name = unique("flt")
    for env, tag, port in (("qa", "qa", 1234), ("production", "prod", 1235)):
        consul_client.agent.service.register(
            name, service_id=f"{name}-{tag}", port=port, tags=[tag, "common"],
            meta={"env": env}, check=consul.Check.ttl("60s"))
    consul_client.agent.check.ttl_pass(f"service:{name}-qa")
    yield name
    for tag in ("qa", "prod"):
        consul_client.agent.service.deregister(f"{name}-{tag}")


def get(addr: str, path: str, expr: str, **params) -> requests.Response:
    return requests.get(f"http://{addr}{path}", params={"filter": expr, **params}, timeout=10)


def test_agent_services_documented_example(consul_addr, two):
    # filtering.mdx, Agent API: filter=Meta.env == "qa"
    resp = get(consul_addr, "/v1/agent/services", 'Meta.env == "qa"')
    assert resp.status_code == 200
    assert [sid for sid in resp.json() if sid.startswith(two)] == [f"{two}-qa"]


def test_agent_checks_filter(consul_addr, two):
    # agent/check.mdx List Checks: filter on Status, ServiceName...
    resp = get(consul_addr, "/v1/agent/checks", f'ServiceName == "{two}" and Status == "passing"')
    assert resp.status_code == 200 and list(resp.json()) == [f"service:{two}-qa"]


def test_catalog_services_filter_applies_to_instances(consul_addr, two):
    # catalog.mdx List Services: "The filter will be executed against each Service mapping";
    # the answer keeps a service when an instance matches, with the tags of what matched
    services = "/v1/catalog/services"
    resp = get(consul_addr, services, f'ServiceName == "{two}" and ServicePort == 1235')
    assert resp.status_code == 200 and resp.json() == {two: ["prod", "common"]}
    resp = get(consul_addr, services, f'ServiceMeta.env == "none" and ServiceName == "{two}"')
    assert resp.json() == {}


def test_catalog_service_and_node_filters(consul_addr, consul_client, two):
    # catalog.mdx List Nodes for Service: selectors ServiceTags, ServiceMeta.<any>, ...
    resp = get(consul_addr, f"/v1/catalog/service/{two}", '"prod" in ServiceTags')
    assert [r["ServiceID"] for r in resp.json()] == [f"{two}-prod"]
    # List Services for Node: the filter applies to the node's Services
    node = consul_client.agent.self()["Config"]["NodeName"]
    resp = get(consul_addr, f"/v1/catalog/node/{node}", f'Service == "{two}" and Port == 1234')
    assert resp.status_code == 200 and list(resp.json()["Services"]) == [f"{two}-qa"]
    # List Nodes: Node, Address, Meta...
    resp = get(consul_addr, "/v1/catalog/nodes", f'Node == "{node}"')
    assert [n["Node"] for n in resp.json()] == [node]


def test_health_filters(consul_addr, consul_client, two):
    node = consul_client.agent.self()["Config"]["NodeName"]
    # filtering.mdx, Health API: filter=ServiceName != "" on /health/node/:node
    resp = get(consul_addr, f"/v1/health/node/{node}", 'ServiceName != ""')
    assert resp.status_code == 200 and all(c["ServiceName"] for c in resp.json())
    assert "serfHealth" not in [c["CheckID"] for c in resp.json()]
    resp = get(consul_addr, f"/v1/health/checks/{two}", 'Status == "critical"')
    assert [c["CheckID"] for c in resp.json()] == [f"service:{two}-prod"]
    resp = get(consul_addr, "/v1/health/state/passing", f'ServiceName == "{two}"')
    assert [c["CheckID"] for c in resp.json()] == [f"service:{two}-qa"]
    # health.mdx List Service Instances: Service.*, Node.*, Checks.* selectors
    resp = get(consul_addr, f"/v1/health/service/{two}", 'Service.Meta.env == "production"')
    assert [r["Service"]["ID"] for r in resp.json()] == [f"{two}-prod"]
    resp = get(consul_addr, f"/v1/health/service/{two}", 'Checks.Status == "critical"')
    assert [r["Service"]["ID"] for r in resp.json()] == [f"{two}-prod"]


@pytest.mark.parametrize("path", ["/v1/catalog/services", "/v1/catalog/nodes",
                                  "/v1/agent/services", "/v1/agent/checks",
                                  "/v1/health/state/any"])
@pytest.mark.parametrize("expr", ["foo", "Nope == 1", "Address == 10.10.10.10"])
def test_an_invalid_filter_fails_the_request(consul_addr, path, expr):
    resp = get(consul_addr, path, expr)
    assert resp.status_code == 500
    assert "Failed to create boolean expression evaluator" in resp.text


def test_health_state_and_checks_take_node_meta(consul_addr, consul_client, unique):
    """api-docs/health List Checks for Service and List Checks in State: ?node-meta=key:value
    keeps the checks of nodes with that metadata."""
    node, svc = unique("meta-node"), unique("meta-svc")
    body = {"Node": node, "Address": "10.1.2.5", "NodeMeta": {"rack": node},
            "Service": {"Service": svc, "Port": 80},
            "Check": {"CheckID": "c", "Name": "c", "Status": "warning", "ServiceID": svc}}
    assert requests.put(f"http://{consul_addr}/v1/catalog/register", json=body,
                        timeout=10).json() is True
    try:
        for path in ("/v1/health/state/warning", f"/v1/health/checks/{svc}"):
            mine = requests.get(f"http://{consul_addr}{path}",
                                params={"node-meta": f"rack:{node}"}, timeout=10).json()
            assert [(c["Node"], c["CheckID"]) for c in mine] == [(node, "c")]
            other = requests.get(f"http://{consul_addr}{path}",
                                 params={"node-meta": "rack:elsewhere"}, timeout=10).json()
            assert other == []
    finally:
        requests.put(f"http://{consul_addr}/v1/catalog/deregister", json={"Node": node},
                     timeout=10)


def test_passing_takes_a_boolean(consul_addr, two):
    """api-docs/health List Service Instances: ?passing (bool); ?passing alone or =true keeps
    only instances whose checks all pass, =false keeps all, a non-boolean is refused (400)."""
    def ids(query: str) -> list[str]:
        resp = requests.get(f"http://{consul_addr}/v1/health/service/{two}{query}", timeout=10)
        assert resp.status_code == 200, resp.text
        return sorted(r["Service"]["ID"] for r in resp.json())
    assert ids("?passing") == ids("?passing=true") == [f"{two}-qa"]
    assert ids("?passing=false") == ids("") == [f"{two}-prod", f"{two}-qa"]
    bad = requests.get(f"http://{consul_addr}/v1/health/service/{two}?passing=maybe", timeout=10)
    assert bad.status_code == 400


def test_a_repeated_parameter_counts_once_by_its_first_value(consul_addr, two):
    """Consul reads query parameters with Go's url.Values.Get: the first value of a repeated
    one (here ?filter=)."""
    resp = requests.get(f"http://{consul_addr}/v1/agent/services",
                        params=[("filter", 'Meta.env == "qa"'),
                                ("filter", 'Meta.env == "production"')], timeout=10)
    assert [sid for sid in resp.json() if sid.startswith(two)] == [f"{two}-qa"]
