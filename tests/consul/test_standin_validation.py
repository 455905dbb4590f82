"""Status codes and fields Consul documents (or its source fixes) for agent/self, invalid
registrations and transactions; each test names its page. Must pass against a real
`consul agent -dev` (a server, its own leader) too."""

from __future__ import annotations

import base64

import pytest
import requests

import consul

pytestmark = pytest.mark.consul


def put(addr: str, path: str, body: object) -> requests.Response:
    return requests.put(f"http://{addr}{path}", json=body, timeout=10)


# --- /v1/agent/self ------------------------------------------------------------------------
def test_agent_self_stats_name_the_leader(consul_addr, consul_client):
    """api-docs/agent (Read Configuration): Config, Member, Meta, and Stats, the agent's
    sub-system statistics, every value a string. A server reports consul.leader and
    consul.leader_addr (what /v1/status/leader answers) and raft.state."""
    me = consul_client.agent.self()
    assert {"Config", "Member", "Meta", "Stats", "DebugConfig", "Coord"} <= set(me)
    assert me["Config"]["Server"] is True
    stats = me["Stats"]
    assert all(isinstance(v, str) for section in stats.values() for v in section.values())
    assert stats["consul"]["server"] == "true" and stats["consul"]["leader"] == "true"
    assert stats["consul"]["leader_addr"] == consul_client.status.leader()
    assert stats["raft"]["state"] == "Leader"
    assert int(stats["raft"]["last_log_index"]) > 0
    assert stats["build"]["version"] == me["Config"]["Version"]
    assert int(stats["serf_lan"]["members"]) >= 1


def test_a_client_agents_stats_report_no_leader(standin):
    """Consul's client agents report consul.server = "false" and known_servers, no leader."""
    host, port = next(iter(standin.agent_addrs.values()))
    stats = requests.get(f"http://{host}:{port}/v1/agent/self", timeout=5).json()["Stats"]
    assert stats["consul"]["server"] == "false" and "leader_addr" not in stats["consul"]
    assert "raft" not in stats


def test_agent_services_count_in_stats(consul_addr, consul_client, unique):
    name = unique("stat")
    before = int(consul_client.agent.self()["Stats"]["agent"]["services"])
    consul_client.agent.service.register(name, port=1)
    try:
        assert int(consul_client.agent.self()["Stats"]["agent"]["services"]) == before + 1
    finally:
        consul_client.agent.service.deregister(name)


# --- /v1/catalog/register ------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ({"Address": "10.1.2.3"}, "Must provide node"),
    ({"Node": "walle-test-noaddr"}, "Must provide address if SkipNodeUpdate is not set"),
    ({"Node": "walle-test-svc", "Address": "10.1.2.3", "Service": {"ID": "x"}},
     "Must provide service name"),
    ({"Node": "walle-test-svc", "Address": "10.1.2.3",
      "Service": {"Service": "x", "Address": "0.0.0.0"}}, "Invalid service address"),
    ({"Node": "walle-test-chk", "Address": "10.1.2.3",
      "Check": {"CheckID": "c", "Name": "c", "ServiceID": "no-such-service"}},
     "Missing service registration"),
])
def test_catalog_register_refusals_are_server_errors(consul_addr, body, message):
    """api-docs/catalog Register Entity: Node and Address are required; Consul checks them in
    the servers' Catalog.Register RPC (agent/consul/catalog_endpoint.go), whose errors the
    HTTP API answers with 500 and the message."""
    resp = put(consul_addr, "/v1/catalog/register", body)
    assert resp.status_code == 500 and message in resp.text
    if body.get("Node"):  # nothing of a refused registration is applied
        assert requests.get(f"http://{consul_addr}/v1/catalog/node/{body['Node']}",
                            timeout=10).json() is None


def test_catalog_deregister_without_node_is_a_server_error(consul_addr):
    resp = put(consul_addr, "/v1/catalog/deregister", {"ServiceID": "x"})
    assert resp.status_code == 500 and "Must provide node" in resp.text


def test_catalog_deregister_of_a_node_removes_its_services_and_checks(consul_addr,
                                                                      consul_client, unique):
    """api-docs/catalog Deregister Entity: without ServiceID or CheckID the node and
    everything on it is removed."""
    node, svc = unique("dereg-node"), unique("dereg-svc")
    assert put(consul_addr, "/v1/catalog/register", {
        "Node": node, "Address": "10.1.2.4", "Service": {"Service": svc, "Port": 80},
        "Check": {"CheckID": "c1", "Name": "c1", "Status": "passing", "ServiceID": svc},
    }).json() is True
    assert put(consul_addr, "/v1/catalog/deregister", {"Node": node}).json() is True
    assert consul_client.catalog.service(svc)[1] == []
    assert consul_client.health.node(node)[1] == []
    assert consul_client.catalog.node(node)[1] is None


# --- /v1/agent/service/register ------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ({"Name": "walle-test-meta", "Meta": {"bad key": "v"}}, "Invalid Service Meta"),
    ({"Name": "walle-test-meta", "Meta": {"consul-x": "v"}}, "Invalid Service Meta"),
    ({"Name": "walle-test-meta", "Meta": {"k": "v" * 513}}, "Invalid Service Meta"),
    ({"Name": "walle-test-meta", "Meta": {f"k{i}": "v" for i in range(65)}},
     "Invalid Service Meta"),
    ({"Name": "walle-test-w", "Weights": {"Passing": 0, "Warning": 1}}, "Invalid Weights"),
    ({"Name": "walle-test-w", "Weights": {"Passing": 1, "Warning": -1}}, "Invalid Weights"),
    ({"Name": "walle-test-addr", "Address": "0.0.0.0"}, "Invalid service address"),
    ({"Port": 80}, "Missing service name"),
])
def test_agent_service_register_refusals_are_bad_requests(consul_addr, consul_client, body,
                                                          message):
    """api-docs/agent/service Register Service: Meta keys follow the service metadata rules
    (at most 64 pairs, keys of ASCII letters, digits, - and _ up to 128 characters, no
    "consul-" prefix, values up to 512 characters); Weights.Passing > 0, Warning >= 0; the
    agent answers 400 with the reason and registers nothing."""
    resp = put(consul_addr, "/v1/agent/service/register", body)
    assert resp.status_code == 400 and message in resp.text
    assert body.get("Name", "-") not in consul_client.agent.services()


# --- /v1/txn -------------------------------------------------------------------------------
def test_txn_unknown_verb_is_an_operation_error(consul_addr, consul_client, unique):
    """api-docs/txn: a failing operation rolls the transaction back and answers 409 with
    Errors [{OpIndex, What}]; an unknown KV verb is such an operation error (state/txn.go)."""
    key = unique("txn-verb")
    value = base64.b64encode(b"v").decode()
    resp = put(consul_addr, "/v1/txn", [{"KV": {"Verb": "set", "Key": key, "Value": value}},
                                        {"KV": {"Verb": "bogus", "Key": key}}])
    assert resp.status_code == 409
    (error,) = resp.json()["Errors"]
    assert error["OpIndex"] == 1 and 'unknown KV verb "bogus"' in error["What"]
    assert consul_client.kv.get(key)[1] is None  # the set was rolled back


# --- consistency modes and blocking queries ------------------------------------------------
@pytest.mark.parametrize("query, mode", [("", "leader"), ("?stale", "stale"),
                                         ("?consistent", "consistent")])
def test_reads_name_their_consistency_mode(consul_addr, query, mode):
    """api-docs/features/consistency, "Visibility into Consistency Mode Used": the
    X-Consul-Effective-Consistency header names the query parameter of the mode used
    (`leader` for the default)."""
    resp = requests.get(f"http://{consul_addr}/v1/catalog/services{query}", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["X-Consul-Effective-Consistency"] == mode
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert int(resp.headers["X-Consul-Index"]) > 0  # features/blocking: always > 0


@pytest.mark.parametrize("query", ["?stale&consistent", "?cached&consistent",
                                   "?max_stale=soon"])
def test_conflicting_consistency_parameters_are_refused(consul_addr, query):
    """Consul's request parsing refuses ?stale with ?consistent (and ?cached with
    ?consistent) as conflicting semantics, and a max_stale that is not a duration: 400."""
    resp = requests.get(f"http://{consul_addr}/v1/kv/anything{query}", timeout=10)
    assert resp.status_code == 400


# --- events --------------------------------------------------------------------------------
def test_event_list_index_follows_the_name_filter(consul_client, unique):
    """api-docs/event List Events: the list blocks on X-Consul-Index, which the agent derives
    from the newest event it returns, after the ?name= filter (event_endpoint.go)."""
    first, second = unique("ev-a"), unique("ev-b")
    consul_client.event.fire(first)
    consul_client.event.fire(second)
    index_first, events = consul_client.event.list(name=first)
    assert [e["Name"] for e in events] == [first]
    index_second, _ = consul_client.event.list(name=second)
    assert index_first != index_second
    index_none, none = consul_client.event.list(name=unique("never-fired"))
    assert none == [] and int(index_none) == 1


def test_fire_answers_the_event_with_lamport_time_zero(consul_addr, consul_client, unique):
    """api-docs/event Fire Event sample response: ID, Name, Payload, the filters, Version 1
    and LTime 0 (the Lamport time is given when the event is gossiped; List Events shows
    it)."""
    name = unique("ev-fire")
    resp = requests.put(f"http://{consul_addr}/v1/event/fire/{name}?node=.", data=b"hi",
                        timeout=10)
    assert resp.status_code == 200
    fired = resp.json()
    assert (fired["Name"], fired["NodeFilter"], fired["Version"], fired["LTime"]) == \
        (name, ".", 1, 0)
    assert base64.b64decode(fired["Payload"]) == b"hi"
    (listed,) = consul_client.event.list(name=name)[1]
    assert listed["ID"] == fired["ID"] and listed["LTime"] > 0


@pytest.mark.parametrize("query", ["?tag=web", "?node=(", "?service=web&tag=("])
def test_event_fire_with_bad_filters_is_a_server_error(consul_addr, unique, query):
    """api-docs/event Fire Event: ?tag= needs ?service=; filters are regular expressions.
    The agent's validation error is answered 500 (event_endpoint.go)."""
    resp = requests.put(f"http://{consul_addr}/v1/event/fire/{unique('ev')}{query}",
                        timeout=10)
    assert resp.status_code == 500


# --- sessions ------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", [("PUT", "/v1/session/destroy/not-a-uuid"),
                                          ("PUT", "/v1/session/renew/not-a-uuid"),
                                          ("GET", "/v1/session/info/not-a-uuid")])
def test_a_malformed_session_uuid_is_an_error(consul_addr, method, path):
    """api-docs/session Delete Session: "If the session UUID is malformed, an error is
    returned"; Consul's state store looks sessions up in a UUID index, which refuses it."""
    resp = requests.request(method, f"http://{consul_addr}{path}", timeout=10)
    assert resp.status_code == 500 and "UUID" in resp.text


def test_destroying_an_unknown_session_is_idempotent(consul_addr):
    """api-docs/session Delete Session: an unknown or expired UUID still answers 200 true."""
    resp = requests.put(f"http://{consul_addr}/v1/session/destroy/"
                        "c5b8ba6f-5b9c-4f5a-8a54-8f1e6a5d0d8b", timeout=10)
    assert resp.status_code == 200 and resp.json() is True


# --- KV and check output ---------------------------------------------------------------------
def test_kv_flags_are_an_unsigned_64_bit_value(consul_addr, consul_client, unique):
    """api-docs/kv Create/Update Key: flags is "an unsigned value between 0 and (2^64)-1".
    Consul's handler returns the strconv.ParseUint error of a value outside as is: a 500
    naming ParseUint (kvs_endpoint.go); nothing is written."""
    key = unique("flags")
    base = f"http://{consul_addr}/v1/kv/{key}"
    assert requests.put(f"{base}?flags={2**64 - 1}", data=b"v", timeout=10).json() is True
    assert consul_client.kv.get(key)[1]["Flags"] == 2**64 - 1
    for bad in (2**64, -1, "x"):
        resp = requests.put(f"{base}?flags={bad}", data=b"w", timeout=10)
        assert resp.status_code == 500 and "ParseUint" in resp.text
        resp = requests.put(f"{base}?cas={bad}", data=b"w", timeout=10)
        assert resp.status_code == 500 and "ParseUint" in resp.text
    assert consul_client.kv.get(key)[1]["Value"] == b"v"
    consul_client.kv.delete(key)


@pytest.mark.parametrize("method, query", [("PUT", "?cas=0&acquire=x"),
                                           ("PUT", "?acquire=x&release=x"),
                                           ("DELETE", "?recurse&cas=1")])
def test_kv_conflicting_flags_are_refused(consul_addr, unique, method, query):
    """api-docs/kv: cas, acquire and release are separate operations (as are a recursive
    and a CAS delete); Consul's handler refuses a combination: 400 "Conflicting flags"."""
    resp = requests.request(method, f"http://{consul_addr}/v1/kv/{unique('conflict')}{query}",
                            data=b"v", timeout=10)
    assert resp.status_code == 400 and "Conflicting flags" in resp.text


@pytest.mark.parametrize("method, query", [("GET", ""), ("DELETE", ""), ("PUT", "")])
def test_kv_operations_on_no_key_need_recurse(consul_addr, method, query):
    """api-docs/kv: reading or deleting the root needs ?recurse (or ?keys to list it);
    without a key name Consul answers 400 "Missing key name"."""
    resp = requests.request(method, f"http://{consul_addr}/v1/kv/{query}", timeout=10)
    assert resp.status_code == 400 and "Missing key name" in resp.text


def test_kv_raw_is_plain_text_and_keys_imply_recurse(consul_addr, consul_client, unique):
    """api-docs/kv Read Key: ?raw answers the bare value as text/plain (never sniffed:
    CVE-2020-25864); ?keys implies recurse; the separator cuts keys after the prefix."""
    prefix = unique("raw")
    consul_client.kv.put(f"{prefix}/a", "<html>")
    consul_client.kv.put(f"{prefix}/sub/b", "x")
    try:
        resp = requests.get(f"http://{consul_addr}/v1/kv/{prefix}/a?raw", timeout=10)
        assert resp.text == "<html>" and resp.headers["Content-Type"] == "text/plain"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Security-Policy"] == "sandbox"
        _, keys = consul_client.kv.get(f"{prefix}/", keys=True)
        assert keys == [f"{prefix}/a", f"{prefix}/sub/b"]
        _, keys = consul_client.kv.get(f"{prefix}/", keys=True, separator="/")
        assert keys == [f"{prefix}/a", f"{prefix}/sub/"]
    finally:
        consul_client.kv.delete(prefix, recurse=True)


def test_ttl_check_output_is_capped_and_says_so(consul_addr, consul_client, unique):
    """api-docs/agent/check Update TTL Check: Output is limited to check_output_max_size
    (4096 bytes by default); Consul's TTL check keeps the first 4096 and notes the cut."""
    check = unique("out")
    consul_client.agent.check.register(check, check=consul.Check.ttl("60s"))
    try:
        resp = requests.put(f"http://{consul_addr}/v1/agent/check/update/{check}",
                            json={"Status": "passing", "Output": "x" * 5000}, timeout=10)
        assert resp.status_code == 200
        output = consul_client.agent.checks()[check]["Output"]
        assert output == "x" * 4096 + " ... (captured 4096 of 5000 bytes)"
    finally:
        consul_client.agent.check.deregister(check)


# --- /v1/agent/members ---------------------------------------------------------------------
def test_members_carry_consuls_serf_tags(consul_client):
    """api-docs/agent List Members: each member's Tags are the agent's gossip tags; the
    sample shows a server's: role "consul", dc, port "8300" (the server RPC port)."""
    me = consul_client.agent.self()
    (member,) = [m for m in consul_client.agent.members()
                 if m["Name"] == me["Config"]["NodeName"]]
    assert member["Status"] == 1 and member["Port"] == 8301
    tags = member["Tags"]
    assert tags["role"] == "consul" and tags["port"] == "8300"
    assert tags["dc"] == me["Config"]["Datacenter"]
    assert me["Member"]["Tags"] == tags


def test_service_configuration_carries_its_content_hash(consul_addr, consul_client, unique):
    """api-docs/agent/service Get Service Configuration: the service definition plus an extra
    ContentHash field, the same hash as the X-Consul-ContentHash header; unknown IDs 404."""
    name = unique("cfg")
    consul_client.agent.service.register(name, port=8080, tags=["a"])
    try:
        resp = requests.get(f"http://{consul_addr}/v1/agent/service/{name}", timeout=10)
        assert resp.status_code == 200
        body = resp.json()
        assert body["ContentHash"] == resp.headers["X-Consul-ContentHash"]
        assert (body["ID"], body["Service"], body["Port"], body["Tags"]) == \
            (name, name, 8080, ["a"])
        assert "ContentHash" not in consul_client.agent.services()[name]
    finally:
        consul_client.agent.service.deregister(name)
    missing = requests.get(f"http://{consul_addr}/v1/agent/service/{name}", timeout=10)
    assert missing.status_code == 404


# --- /v1/agent/check/register --------------------------------------------------------------
@pytest.mark.parametrize("body, status, message", [
    ({"TTL": "10s"}, 400, "Missing check name"),
    ({"Name": "walle-test-c", "TTL": "10s", "Status": "bogus"}, 400, ""),
    ({"Name": "walle-test-c", "TTL": "10s", "ServiceID": "walle-test-no-such-service"}, 404,
     "does not exist"),
])
def test_agent_check_register_refusals(consul_addr, consul_client, body, status, message):
    """api-docs/agent/check Register Check: Name is required and Status must be a check
    status (400); a ServiceID must name a service of this agent (Consul's handler answers
    404 "ServiceID ... does not exist")."""
    resp = put(consul_addr, "/v1/agent/check/register", body)
    assert resp.status_code == status and message in resp.text
    assert "walle-test-c" not in consul_client.agent.checks()


def test_read_only_txn_is_served_like_a_read(consul_addr, consul_client, unique):
    """api-docs/txn: a transaction without writes is fast-pathed like a read: it answers
    X-Consul-KnownLeader and X-Consul-LastContact and takes ?stale / ?consistent; with a
    write those headers are absent. Results carry no Value except for get and get-tree, and
    deletes add no result."""
    key = unique("txn-ro")
    value = base64.b64encode(b"v").decode()
    write = put(consul_addr, "/v1/txn", [{"KV": {"Verb": "set", "Key": key, "Value": value}},
                                         {"KV": {"Verb": "delete", "Key": f"{key}-x"}}])
    assert write.status_code == 200 and "X-Consul-KnownLeader" not in write.headers
    (result,) = write.json()["Results"]
    assert result["KV"]["Key"] == key and result["KV"]["Value"] is None
    read = requests.put(f"http://{consul_addr}/v1/txn?stale",
                        json=[{"KV": {"Verb": "get", "Key": key}}], timeout=10)
    assert read.status_code == 200
    assert read.headers["X-Consul-KnownLeader"] == "true" and "X-Consul-LastContact" in \
        read.headers
    assert read.json()["Results"][0]["KV"]["Value"] == value
    conflicting = requests.put(f"http://{consul_addr}/v1/txn?stale&consistent",
                               json=[{"KV": {"Verb": "get", "Key": key}}], timeout=10)
    assert conflicting.status_code == 400
    consul_client.kv.delete(key)


@pytest.mark.parametrize("enable, status", [("", 400), ("maybe", 400), ("T", 200),
                                            ("false", 200)])
def test_node_maintenance_enable_is_a_required_boolean(consul_addr, consul_client, enable,
                                                       status):
    """api-docs/agent Enable Maintenance Mode: `enable` (bool: <required>); Consul parses it
    with Go's ParseBool (so "T" is true) and refuses a missing or other value with 400."""
    try:
        resp = requests.put(f"http://{consul_addr}/v1/agent/maintenance?enable={enable}",
                            timeout=10)
        assert resp.status_code == status
    finally:
        requests.put(f"http://{consul_addr}/v1/agent/maintenance?enable=false", timeout=10)


def test_sessions_and_checks_for_a_node_by_name_or_id(consul_addr, consul_client, unique):
    """api-docs/session List Sessions for Node and api-docs/health List Checks for Node:
    `node` is the name or ID of the node."""
    me = consul_client.agent.self()["Config"]
    session = consul_client.session.create(name=unique("by-node"))
    try:
        for node in (me["NodeName"], me["NodeID"]):
            listed = requests.get(f"http://{consul_addr}/v1/session/node/{node}",
                                  timeout=10).json()
            assert session in [s["ID"] for s in listed]
            checks = requests.get(f"http://{consul_addr}/v1/health/node/{node}",
                                  timeout=10).json()
            assert "serfHealth" in [c["CheckID"] for c in checks]
    finally:
        consul_client.session.destroy(session)


# --- catalog/datacenters, deregistrations, TTL updates -------------------------------------
def test_datacenters_lists_the_local_one(consul_client):
    """api-docs/catalog List Datacenters: the known datacenters, the agent's own first."""
    me = consul_client.agent.self()["Config"]
    assert consul_client.catalog.datacenters()[0] == me["Datacenter"]


def test_deregistering_unknown_checks_and_services_is_not_found(consul_addr, unique):
    """agent/check.mdx Deregister Check says "no action is taken" for an unknown ID; Consul's
    handler (vetCheckUpdateWithAuthorizer, vetServiceUpdateWithAuthorizer) answers 404
    "Unknown check ID" / "Unknown service ID" since 1.x: the stand-in follows the code."""
    for path in (f"/v1/agent/check/deregister/{unique('nochk')}",
                 f"/v1/agent/service/deregister/{unique('nosvc')}",
                 f"/v1/agent/check/pass/{unique('nochk')}"):
        resp = requests.put(f"http://{consul_addr}{path}", timeout=10)
        assert resp.status_code == 404 and "Unknown" in resp.text


def test_ttl_update_of_a_check_without_ttl_is_refused(consul_addr, consul_client, unique,
                                                      probe_url):
    """agent/check.mdx TTL Check Pass: "used with a TTL type check"; for another type the
    agent's updateTTLCheck fails ('does not have associated TTL', a 500)."""
    check = unique("http-chk")
    consul_client.agent.check.register(
        check, check=consul.Check.http(f"{probe_url}/status/200", "10s"))
    try:
        resp = requests.put(f"http://{consul_addr}/v1/agent/check/pass/{check}", timeout=10)
        assert resp.status_code == 500 and "TTL" in resp.text
    finally:
        consul_client.agent.check.deregister(check)
