"""Agent services and checks, catalog and health, from Consul's documentation:
https://developer.hashicorp.com/consul/api-docs/agent/service, .../agent/check,
.../api-docs/health, .../api-docs/catalog and .../docs/services/usage/checks."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

import consul

pytestmark = pytest.mark.consul


@pytest.fixture
def service(consul_client, unique):
    """A service name; everything registered under it is deregistered afterwards."""
    name = unique("svc")
    yield name
    for sid, svc in consul_client.agent.services().items():
        if svc["Service"] == name:
            consul_client.agent.service.deregister(sid)


def _instances(client, name, **kw):
    return client.health.service(name, **kw)[1]


def test_service_check_gets_generated_id_and_starts_critical(consul_client, service):
    consul_client.agent.service.register(service, service_id=f"{service}-1", port=8080,
                                         tags=["v1"], check=consul.Check.ttl("30s"))
    # agent/service.mdx: ID defaults to Name; a check's ID is service:<service-id>;
    # checks.mdx: checks start critical unless Status is given.
    checks = consul_client.agent.checks()
    check = checks[f"service:{service}-1"]
    assert check["Status"] == "critical" and check["ServiceID"] == f"{service}-1"
    consul_client.agent.service.register(service, port=9090)
    assert service in consul_client.agent.services()


def test_ttl_updates_set_status_and_passing_filter(consul_client, service):
    consul_client.agent.service.register(service, port=80, check=consul.Check.ttl("30s"))
    check_id = f"service:{service}"
    assert _instances(consul_client, service, passing=True) == []
    consul_client.agent.check.ttl_pass(check_id, notes="all good")
    (inst,) = _instances(consul_client, service, passing=True)
    check = next(c for c in inst["Checks"] if c["CheckID"] == check_id)
    assert check["Status"] == "passing" and check["Output"] == "all good"
    # health.mdx: serfHealth, the node check, is part of every instance's Checks.
    assert "serfHealth" in [c["CheckID"] for c in inst["Checks"]]
    consul_client.agent.check.ttl_warn(check_id)
    assert _instances(consul_client, service, passing=True) == []
    assert len(_instances(consul_client, service)) == 1
    consul_client.agent.check.ttl_fail(check_id)
    _, critical = consul_client.health.state("critical")
    assert check_id in [c["CheckID"] for c in critical]


def test_check_update_endpoint_sets_status_and_output(consul_addr, consul_client, service):
    consul_client.agent.service.register(service, check=consul.Check.ttl("30s"))
    resp = requests.put(f"http://{consul_addr}/v1/agent/check/update/service:{service}",
                        json={"Status": "passing", "Output": "fine"}, timeout=5)
    assert resp.status_code == 200
    check = consul_client.agent.checks()[f"service:{service}"]
    assert (check["Status"], check["Output"]) == ("passing", "fine")


def test_ttl_check_expires_to_critical(consul_client, service, wait_until):
    consul_client.agent.service.register(service, check=consul.Check.ttl("2s"))
    consul_client.agent.check.ttl_pass(f"service:{service}")
    assert _instances(consul_client, service, passing=True)
    started = time.monotonic()
    # checks.mdx: if the TTL passes without an update the check turns critical.
    wait_until(lambda: consul_client.agent.checks()[f"service:{service}"]["Status"] ==
               "critical", timeout_s=10)
    assert time.monotonic() - started >= 1.5


@pytest.mark.parametrize(("code", "status"), [(200, "passing"), (429, "warning"),
                                              (500, "critical")])
def test_http_check_runs_and_maps_status(consul_client, service, probe_url, wait_until, code,
                                         status):
    # checks.mdx: 2xx passing, 429 warning, any other code critical.
    consul_client.agent.service.register(
        service, check=consul.Check.http(f"{probe_url}/status/{code}", "1s", timeout="1s"))
    wait_until(lambda: consul_client.agent.checks()[f"service:{service}"]["Status"] == status,
               timeout_s=10)


def test_tcp_check_passes_on_open_port_and_fails_on_closed(consul_client, service, wait_until):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                listener.accept()[0].close()
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        consul_client.agent.service.register(
            service, check=consul.Check.tcp("127.0.0.1", port, "1s", timeout="1s"))
        wait_until(lambda: consul_client.agent.checks()[f"service:{service}"]["Status"] ==
                   "passing", timeout_s=10)
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    wait_until(lambda: consul_client.agent.checks()[f"service:{service}"]["Status"] ==
               "critical", timeout_s=10)


def test_service_maintenance_hides_from_passing(consul_client, service):
    consul_client.agent.service.register(service, check=consul.Check.ttl("30s"))
    consul_client.agent.check.ttl_pass(f"service:{service}")
    consul_client.agent.service.maintenance(service, "true", reason="upgrading")
    checks = consul_client.agent.checks()
    # agent/service.mdx: maintenance adds a critical check, so the service leaves results.
    maint = checks[f"_service_maintenance:{service}"]
    assert maint["Status"] == "critical" and maint["Notes"] == "upgrading"
    assert _instances(consul_client, service, passing=True) == []
    consul_client.agent.service.maintenance(service, "false")
    assert len(_instances(consul_client, service, passing=True)) == 1


def test_replace_existing_checks_removes_missing_checks(consul_client, service):
    consul_client.agent.service.register(
        service, check=consul.Check.ttl("30s"), extra_checks=[consul.Check.ttl("30s")])
    ids = {c for c, v in consul_client.agent.checks().items() if v["ServiceID"] == service}
    assert ids == {f"service:{service}:1", f"service:{service}:2"}
    consul_client.agent.service.register(service, check=consul.Check.ttl("30s"),
                                         replace_existing_checks=True)
    ids = {c for c, v in consul_client.agent.checks().items() if v["ServiceID"] == service}
    assert ids == {f"service:{service}"}


def test_tag_filter_and_catalog_views(consul_client, service):
    consul_client.agent.service.register(service, service_id=f"{service}-a", tags=["blue"],
                                         port=1)
    consul_client.agent.service.register(service, service_id=f"{service}-b", tags=["green"],
                                         port=2)
    _, rows = consul_client.catalog.service(service, tag="blue")
    assert [r["ServiceID"] for r in rows] == [f"{service}-a"] and rows[0]["ServicePort"] == 1
    assert [i["Service"]["ID"] for i in _instances(consul_client, service, tag="green")] == [
        f"{service}-b"]
    _, services = consul_client.catalog.services()
    assert sorted(services[service]) == ["blue", "green"]
    # filtering.mdx: ?filter= with `Service.Tags contains "x"`.
    _, filtered = consul_client.health.service(service, filter_expr='Service.Tags contains "green"')
    assert [i["Service"]["ID"] for i in filtered] == [f"{service}-b"]


def test_health_blocking_query_wakes_on_check_change(consul_client, service):
    consul_client.agent.service.register(service, check=consul.Check.ttl("30s"))
    index, _ = consul_client.health.service(service, passing=True)
    timer = threading.Timer(0.3, consul_client.agent.check.ttl_pass, args=(f"service:{service}",))
    timer.start()
    try:
        new_index, rows = consul_client.health.service(service, passing=True, index=index,
                                                       wait="10s")
    finally:
        timer.join()
    assert int(new_index) > int(index) and len(rows) == 1


def test_catalog_register_external_node_with_meta(consul_addr, consul_client, unique):
    node = unique("ext")
    # catalog.mdx "Register Entity": NodeMeta in the body (py-consul sends node_meta as a
    # query parameter, which Consul ignores here, so the request is sent raw).
    body = {"Node": node, "Address": "10.77.9.9", "NodeMeta": {"walle_cpu": "4"},
            "Service": {"Service": "x-" + node, "Port": 5}}
    resp = requests.put(f"http://{consul_addr}/v1/catalog/register", json=body, timeout=5)
    assert resp.status_code == 200 and resp.json() is True
    try:
        _, nodes = consul_client.catalog.nodes(node_meta={"walle_cpu": "4"})
        assert node in [n["Node"] for n in nodes]
        _, info = consul_client.catalog.node(node)
        assert info["Node"]["Address"] == "10.77.9.9" and info["Node"]["Meta"]["walle_cpu"] == "4"
        assert "x-" + node in info["Services"]
    finally:
        consul_client.catalog.deregister(node)
    assert consul_client.catalog.node(node)[1] is None


def test_service_configuration_blocks_on_content_hash(consul_addr, consul_client, service):
    """agent/service.mdx: Get Service Configuration supports hash-based blocking
    (features/blocking.mdx "Hash-based Blocking Queries": ?hash= until the X-Consul-ContentHash
    would differ, or ?wait=); List Services and List Checks do not block and send no hash."""
    consul_client.agent.service.register(service, port=80)
    url = f"http://{consul_addr}/v1/agent/service/{service}"
    digest = requests.get(url, timeout=5).headers["X-Consul-ContentHash"]
    started = time.monotonic()
    same = requests.get(url, params={"hash": digest, "wait": "1s"}, timeout=10)
    assert time.monotonic() - started >= 0.9
    assert same.headers["X-Consul-ContentHash"] == digest
    timer = threading.Timer(0.3, consul_client.agent.service.register, args=(service,),
                            kwargs={"port": 81})
    timer.start()
    started = time.monotonic()
    try:
        changed = requests.get(url, params={"hash": digest, "wait": "10s"}, timeout=20)
    finally:
        timer.join()
    assert time.monotonic() - started < 5
    assert changed.headers["X-Consul-ContentHash"] != digest and changed.json()["Port"] == 81
    for listing in ("services", "checks"):
        resp = requests.get(f"http://{consul_addr}/v1/agent/{listing}",
                            params={"hash": digest, "wait": "5s"}, timeout=10)
        assert resp.status_code == 200 and "X-Consul-ContentHash" not in resp.headers
        assert resp.elapsed.total_seconds() < 4


def test_failures_before_critical_holds_the_status_until_enough_failures(
        consul_addr, consul_client, service, wait_until):
    """agent/check.mdx Register Check: FailuresBeforeCritical is the number of consecutive
    unsuccessful results required before the check turns critical (FailuresBeforeWarning
    defaults to it), so a passing check stays passing through the first failures."""
    hits = []

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            hits.append(time.monotonic())
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    thread.start()
    try:
        body = {"Name": service, "Check": {
            "HTTP": f"http://127.0.0.1:{server.server_address[1]}/", "Interval": "1s",
            "Timeout": "1s", "Status": "passing", "FailuresBeforeCritical": 3}}
        resp = requests.put(f"http://{consul_addr}/v1/agent/service/register", json=body,
                            timeout=10)
        assert resp.status_code == 200
        check = f"service:{service}"
        wait_until(lambda: len(hits) >= 2, timeout_s=15)
        assert consul_client.agent.checks()[check]["Status"] == "passing"
        wait_until(lambda: consul_client.agent.checks()[check]["Status"] == "critical",
                   timeout_s=15)
        assert len(hits) >= 3
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("value", "replaced"), [("", True), ("true", True), ("1", False),
                                                 ("false", False)])
def test_replace_existing_checks_is_on_only_bare_or_true(consul_addr, consul_client, service,
                                                         value, replaced):
    """agent/service.mdx Register Service: ?replace-existing-checks; Consul's handler turns it
    on when present with no value or "true" exactly (agent_endpoint.go)."""
    two = {"Name": service, "Checks": [{"TTL": "30s"}, {"TTL": "30s"}]}
    assert requests.put(f"http://{consul_addr}/v1/agent/service/register", json=two,
                        timeout=10).status_code == 200
    one = {"Name": service, "Check": {"TTL": "30s"}}
    resp = requests.put(f"http://{consul_addr}/v1/agent/service/register"
                        f"?replace-existing-checks={value}", json=one, timeout=10)
    assert resp.status_code == 200
    ids = {c for c, v in consul_client.agent.checks().items() if v["ServiceID"] == service}
    assert (f"service:{service}:1" not in ids) == replaced
