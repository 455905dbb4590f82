"""The least-privilege Consul ACL policies Walle ships (roles/consul/files/acl/*.json, the
rule syntax of Consul's ACL policies in JSON) cover every Consul endpoint the code calls, for
each actor that calls it, and grant nothing an actor does not need.

Two tables: ENDPOINT_RULES (endpoint -> the ACL rules Consul checks for it, from Consul's
API docs) and ACTOR_CALLS (who calls which endpoint on which key/service/node). A scan of the
adapter and the node module finds every endpoint they use, so a new call without a row here
fails this test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POLICY_DIR = REPO / "roles/consul/files/acl"
CALLERS = [*sorted((REPO / "scheduler/walle/adapters/consul").glob("*.py")),
           REPO / "plugins/modules/walle_consul_service.py"]

RESOURCES = {"acl", "agent", "agent_prefix", "event", "event_prefix", "identity",
             "identity_prefix", "key", "key_prefix", "keyring", "mesh", "node", "node_prefix",
             "operator", "peering", "query", "query_prefix", "service", "service_prefix",
             "session", "session_prefix"}
UNLABELED = {"acl", "keyring", "mesh", "operator", "peering"}
LEVEL = {"deny": -1, "list": 0, "read": 1, "write": 2}

# endpoint (as the code names it) -> rules Consul checks: (resource, access)
ENDPOINT_RULES: dict[str, list[tuple[str, str]]] = {
    "kv.get": [("key", "read")],
    "kv.put": [("key", "write")],  # also acquire/release (plus a valid session)
    "kv.delete": [("key", "write")],
    "/v1/txn": [("key", "write")],  # KV set/cas/delete ops; check-session needs read
    "/v1/session/create": [("session", "write")],  # on the node the session is bound to
    "session.renew": [("session", "write")],
    "session.destroy": [("session", "write")],
    "health.state": [("node", "read"), ("service", "read")],  # filtered by both
    "health.service": [("service", "read"), ("node", "read")],
    "catalog.nodes": [("node", "read")],
    "/v1/event/list": [("event", "read")],
    "event.fire": [("event", "write")],
    "/v1/agent/service/": [("service", "read")],  # GET one local service
    "/v1/agent/checks": [("node", "read"), ("service", "read")],
    "/v1/agent/service/register": [("service", "write")],
    "/v1/agent/service/deregister/": [("service", "write")],
    "agent.service.deregister": [("service", "write")],
    "/v1/agent/check/update/": [("service", "write")],  # a service's TTL check
    # walle backup/restore: Consul requires a management token (acl = "write"); no Walle
    # actor's policy grants it (docs/security.md: use an offline management token).
    "/v1/snapshot": [("acl", "write")],
}

# actor -> (endpoint, the key / service / session node / event the call touches)
ACTOR_CALLS: dict[str, list[tuple[str, str]]] = {
    "scheduler": [
        ("/v1/session/create", "ctl1"), ("session.renew", "ctl1"),
        ("session.destroy", "ctl1"),
        ("kv.get", "walle/leader"), ("kv.put", "walle/leader"),
        ("kv.get", "walle/jobs/web"), ("kv.put", "walle/jobs/web"),  # automatic rollback
        ("kv.get", "walle/allocs/web/0"), ("/v1/txn", "walle/allocs/web/0"),
        ("kv.get", "walle/nodes/node1/drain"),
        ("/v1/txn", "walle/config/placement"),  # the defaults it decides with (walle plan)
        ("kv.get", "walle/secrets/db/password"),  # a job's `secrets:` read at placement
        ("health.state", "node1"), ("health.state", "web"), ("catalog.nodes", "node1"),
    ],
    "operator": [  # walle run/stop/scale, drain/undrain, status/plan/nodes
        ("kv.get", "walle/jobs/web"), ("kv.put", "walle/jobs/web"),
        ("kv.delete", "walle/jobs/web"),
        ("kv.put", "walle/nodes/node1/drain"), ("kv.delete", "walle/nodes/node1/drain"),
        ("kv.get", "walle/allocs/web/0"), ("kv.get", "walle/leader"),
        ("kv.get", "walle/config/placement"),  # walle plan: the leader's defaults
        ("event.fire", "walle-drain"),
        ("health.state", "node1"), ("health.state", "web"), ("catalog.nodes", "node1"),
    ],
    "node-walle": [  # walle_consul_service on the node (and a TTL feeder), batch commits,
        ("kv.put", "walle/done/etl/0"),  # cron run history (walle-cron-record: read + CAS)
        ("kv.get", "walle/runs/tick/0"), ("kv.put", "walle/runs/tick/0"),
        ("/v1/agent/service/", "web"), ("/v1/agent/checks", "node1"),
        ("/v1/agent/checks", "web"), ("/v1/agent/service/register", "web"),
        ("/v1/agent/service/deregister/", "web"), ("/v1/agent/check/update/", "web"),
    ],
    "monitoring": [
        ("kv.get", "walle/jobs/web"), ("kv.get", "walle/allocs/web/0"),
        ("health.state", "node1"), ("health.state", "web"), ("catalog.nodes", "node1"),
        ("health.service", "web"), ("health.service", "node1"), ("/v1/event/list", "walle-drain"),
    ],
    "secrets-admin": [("kv.put", "walle/secrets/db/password"),
                      ("kv.delete", "walle/secrets/db/password")],
}
POLICY_OF = {"scheduler": "scheduler.json", "operator": "operator.json",
             "node-walle": "node-walle.json", "monitoring": "monitoring.json",
             "secrets-admin": "secrets-admin.json"}


def load(name: str) -> dict:
    return json.loads((POLICY_DIR / name).read_text())


def access(policy: dict, resource: str, name: str) -> str | None:
    """Consul's matching: an exact rule wins, else the longest matching prefix rule."""
    exact = (policy.get(resource) or {}).get(name)
    if exact:
        return exact["policy"]
    prefixes = [p for p in (policy.get(f"{resource}_prefix") or {}) if name.startswith(p)]
    if not prefixes:
        return None  # default_policy = deny
    return policy[f"{resource}_prefix"][max(prefixes, key=len)]["policy"]


def allows(policy: dict, resource: str, name: str, wanted: str) -> bool:
    got = access(policy, resource, name)
    return got is not None and LEVEL[got] >= LEVEL[wanted]


@pytest.mark.parametrize("path", sorted(POLICY_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_policy_parses_and_uses_only_consul_rule_syntax(path):
    policy = json.loads(path.read_text())
    assert policy and set(policy) <= RESOURCES, set(policy) - RESOURCES
    for resource, rules in policy.items():
        if resource in UNLABELED:
            assert rules in LEVEL, (resource, rules)
            continue
        for label, rule in rules.items():
            assert set(rule) == {"policy"} and rule["policy"] in LEVEL, (resource, label)
            assert rule["policy"] != "list" or resource == "key_prefix"


def test_every_endpoint_the_code_calls_has_its_rules_here():
    text = "\n".join(p.read_text() for p in CALLERS)
    raw_paths = set(re.findall(r'f?"(/v1/[a-z_/-]+)', text))
    client_calls = {f"{area}.{verb}" for area, verb in re.findall(
        r"(?:\b|_)(kv|session|health|catalog|ev|agent\.service)\.(get|put|delete|renew|destroy"
        r"|state|service|nodes|fire|deregister)\(", text)}
    client_calls = {c.replace("ev.", "event.") for c in client_calls} - {"health.get"}
    assert raw_paths and client_calls
    missing = (raw_paths | client_calls) - set(ENDPOINT_RULES)
    assert not missing, f"map these endpoints to their ACL rules: {sorted(missing)}"


@pytest.mark.parametrize("actor", sorted(ACTOR_CALLS))
def test_each_actor_policy_covers_the_calls_it_makes(actor):
    policy = load(POLICY_OF[actor])
    denied = [(endpoint, name, resource, wanted)
              for endpoint, name in ACTOR_CALLS[actor]
              for resource, wanted in ENDPOINT_RULES[endpoint]
              if not allows(policy, resource, name, wanted)]
    assert denied == []


def test_least_privilege():
    scheduler, operator = load("scheduler.json"), load("operator.json")
    node, monitoring = load("node-walle.json"), load("monitoring.json")
    # only the scheduler writes actual state and the leader key
    for key in ("walle/allocs/web/0", "walle/leader"):
        assert allows(scheduler, "key", key, "write")
        assert not allows(operator, "key", key, "write")
    # secret values: read by the scheduler only, written only with the secrets-admin token
    secret = "walle/secrets/db/password"
    assert allows(scheduler, "key", secret, "read")
    assert not allows(scheduler, "key", secret, "write")
    for policy in (operator, monitoring, node):
        assert not allows(policy, "key", secret, "read")
    # a node records its batch runs' success and its cron runs, and writes no other state
    assert allows(node, "key", "walle/done/etl/0", "write")
    assert allows(node, "key", "walle/runs/tick/0", "write")
    for key in ("walle/allocs/web/0", "walle/jobs/web", "walle/leader", "walle/nodes/n/drain"):
        assert not allows(node, "key", key, "write") and not allows(node, "key", key, "read")
    assert load("secrets-admin.json") == {"key_prefix": {"walle/secrets/": {"policy": "write"}}}
    # nothing outside walle/ for anyone
    for policy in (scheduler, operator, monitoring, node):
        assert not allows(policy, "key", "vault/secret", "read")
        assert "acl" not in policy and "operator" not in policy and "keyring" not in policy
        assert not allows(policy, "agent", "node1", "write")
    # the node-side token registers services, commits batch runs and touches no other KV,
    # no sessions or events
    assert node.keys() <= {"service", "service_prefix", "node_prefix", "key_prefix"}
    assert node["key_prefix"] == {"walle/done/": {"policy": "write"},
                                  "walle/runs/": {"policy": "write"}}
    assert not allows(node, "service", "consul", "write")
    assert not allows(node, "node", "node1", "write")
    # read-only monitoring, scheduler reads the catalog only
    assert all(rule["policy"] in ("read", "list", "deny") for rules in monitoring.values()
               for rule in rules.values())
    assert not allows(scheduler, "service", "web", "write")
    assert not allows(scheduler, "node", "node1", "write")


def test_agent_and_dns_tokens():
    agent = load("node-agent.node1.json")  # what -node-identity node1:dc1 grants
    assert allows(agent, "node", "node1", "write")
    assert not allows(agent, "node", "node2", "write")
    assert allows(agent, "service", "web", "read") and not allows(agent, "service", "web",
                                                                  "write")
    dns = load("dns.json")
    for resource in ("node", "service", "query"):
        assert access(dns, resource, "x") == "read"


HCL_BLOCK = re.compile(r"```hcl\n# (roles/consul/files/acl/[\w.-]+\.json)\n(.*?)```", re.S)
HCL_RULE = re.compile(r'^(\w+) "([^"]*)" \{ policy = "(\w+)" \}$')


def test_security_doc_shows_exactly_the_shipped_policies():
    doc = (REPO / "docs/security.md").read_text()
    shown = {}
    for path, body in HCL_BLOCK.findall(doc):
        policy: dict = {}
        for line in body.strip().splitlines():
            resource, label, level = HCL_RULE.match(line).groups()
            policy.setdefault(resource, {})[label] = {"policy": level}
        shown[path] = policy
    shipped = {str(p.relative_to(REPO)): json.loads(p.read_text())
               for p in POLICY_DIR.glob("*.json")}
    assert shown == shipped
