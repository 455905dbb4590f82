import base64
import json

import pytest

from walle.adapters.consul import KvOp, node_from_catalog, registration
from walle.adapters.consul.nodes import node_health, nodes_from
from walle.adapters.consul.state import TXN_IN_FLIGHT, StateStore, chunk_ops
from walle.jobspec.model import HealthCheck


def entry(name, **meta):
    return {"Node": name, "Address": "10.77.0.11", "Meta": meta}


def test_node_meta_becomes_resources():
    n = node_from_catalog(entry("node1", walle_cpu="4", walle_memory="8589934592",
                                walle_disk="1000", walle_gpus="2", walle_zone="z1",
                                walle_rack="r2", walle_datasets="imagenet, logs",
                                walle_label_ssd="true"), "passing")
    assert (n.cpu, n.memory, n.disk, n.gpus) == (4.0, 8589934592, 1000, 2)
    assert (n.zone, n.rack, n.datasets) == ("z1", "r2", ("imagenet", "logs"))
    assert n.labels == {"ssd": "true"}
    assert n.schedulable and n.healthy


def test_node_without_walle_cpu_is_not_schedulable():
    n = node_from_catalog(entry("node2", walle_memory="1"))
    assert not n.schedulable
    assert any("walle_cpu" in p for p in n.problems)
    assert not n.healthy  # no serfHealth known


def test_bad_meta_is_reported_not_raised():
    n = node_from_catalog(entry("node3", walle_cpu="lots"))
    assert not n.schedulable and "walle_cpu='lots'" in n.problems[0]


def test_serf_health_and_maintenance():
    checks = [
        {"Node": "a", "CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
        {"Node": "a", "CheckID": "service:web-0", "Status": "critical", "ServiceID": "web-0"},
        {"Node": "b", "CheckID": "_node_maintenance", "Status": "critical", "ServiceID": ""},
        {"Node": "b", "CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
        {"Node": "c", "CheckID": "serfHealth", "Status": "critical", "ServiceID": ""},
    ]
    assert node_health(checks) == {"a": "passing", "b": "maintenance", "c": "critical"}
    nodes = nodes_from([entry("c", walle_cpu="1"), entry("a", walle_cpu="1")], checks)
    assert [(n.name, n.healthy) for n in nodes] == [("a", True), ("c", False)]


def test_txn_chunks_carry_the_guard_and_stay_under_the_limit():
    ops = [KvOp("cas", f"walle/allocs/j/{i}", b"{}", index=0) for i in range(130)]
    guard = KvOp("check-session", "walle/leader", session="s1")
    chunks = chunk_ops(ops, guard, size=64)
    assert [len(c) for _, c in chunks] == [64, 64, 5]
    assert all(c[0] is guard for _, c in chunks)
    assert [off for off, _ in chunks] == [0, 63, 126]
    assert sum(len(c) - 1 for _, c in chunks) == 130


def test_kv_op_encodes_value_base64():
    op = KvOp("cas", "walle/jobs/web", b'{"a":1}', index=7).to_txn()
    assert op == {"KV": {"Verb": "cas", "Key": "walle/jobs/web",
                         "Value": base64.b64encode(b'{"a":1}').decode(), "Index": 7}}


class FakeApi:
    """Answers /v1/txn with scripted (status, body) pairs, the i-th to the i-th chunk (by
    its first caller op: chunks of one wave are sent at once), and records the ops sent."""

    address = "http://fake"

    def __init__(self, answers):
        self.answers = list(answers)
        self.sent = []
        self.client = type("C", (), {"kv": None})()
        self.firsts: list[str] = []

    def raw(self, method, path, *, params=None, data="", what=None):
        ops = json.loads(data)
        self.sent.append(ops)
        first = next(op["KV"]["Key"] for op in ops if op["KV"]["Verb"] != "check-session")
        return self.answers[int(first[1:] or 0) // 63]


def test_txn_maps_errors_back_to_caller_positions_and_stops_at_first_failed_chunk():
    ops = [KvOp("cas", f"k{i}", b"v", index=0) for i in range(70)]
    api = FakeApi([(200, {}), (409, {"Errors": [{"OpIndex": 3, "What": "cas failed"}]})])
    result = StateStore(api).txn(ops, session="s1")
    assert not result.ok and result.applied_ops == 63
    assert result.errors[0].op_index == 63 + 2  # chunk op 3 = guard + caller op 65
    assert not result.lost_leadership
    assert len(api.sent) == 2


def test_txn_sends_a_wave_of_chunks_at_once_and_stops_after_a_failed_wave():
    ops = [KvOp("cas", f"k{i}", b"v", index=0) for i in range(63 * 6)]
    conflict = (409, {"Errors": [{"OpIndex": 1, "What": "cas failed"}]})
    answers = [(200, {"Results": [{"KV": {"Key": f"k{63 * i}", "ModifyIndex": 10 + i}}]})
               for i in range(6)]
    api = FakeApi(answers[:1] + [conflict] + answers[2:])
    result = StateStore(api).txn(ops, session="s1")
    assert len(api.sent) == TXN_IN_FLIGHT  # the first wave only: chunk 1 failed in it
    assert not result.ok and result.applied_ops == 63 * (TXN_IN_FLIGHT - 1)
    assert result.errors[0].op_index == 63  # chunk 1's first caller op
    assert result.indexes == {f"k{63 * i}": 10 + i for i in range(TXN_IN_FLIGHT) if i != 1}
    api = FakeApi(answers)
    result = StateStore(api).txn(ops, session="s1")
    assert result.ok and result.applied_ops == len(ops) and len(api.sent) == 6


def test_txn_guard_failure_means_lost_leadership():
    api = FakeApi([(409, {"Errors": [{"OpIndex": 0, "What": "lock not held"}]})])
    result = StateStore(api).txn([KvOp("cas", "k", b"v", index=0)], session="old")
    assert result.lost_leadership and result.applied_ops == 0


def test_registration_builds_checks_from_the_job_spec():
    http = registration("web-0", "web", "10.77.0.11", 8080, ("v1",), {"job": "web"},
                        HealthCheck(type="http", path="/health", interval=2, timeout=0.5,
                                    deregister_after=90))
    assert http["Check"] == {"Name": "web http", "HTTP": "http://10.77.0.11:8080/health",
                             "Interval": "2s", "Timeout": "500ms",
                             "DeregisterCriticalServiceAfter": "90s"}
    tcp = registration("db-0", "db", "10.77.0.12", 5432, check=HealthCheck(type="tcp"))
    assert tcp["Check"]["TCP"] == "10.77.0.12:5432"
    ttl = registration("b-0", "b", "10.77.0.12", None, check=HealthCheck(type="ttl", ttl=30))
    assert ttl["Check"]["TTL"] == "30s" and "HTTP" not in ttl["Check"]
    # refused as the module refuses them, naming the field or option (the spec parser
    # refuses all of these earlier)
    with pytest.raises(ValueError, match="deregister_critical_after"):
        registration("w-0", "w", "10.77.0.12", 80, check=HealthCheck(type="tcp",
                                                                     deregister_after=30))
    with pytest.raises(ValueError, match="health.ttl"):
        registration("b-0", "b", "10.77.0.12", None, check=HealthCheck(type="ttl"))
    with pytest.raises(ValueError, match="health.type"):
        registration("s-0", "s", "10.77.0.12", 80, check=HealthCheck(type="script"))
    with pytest.raises(ValueError, match="health.port"):
        registration("x-0", "x", "10.77.0.12", None, check=HealthCheck(type="http"))
