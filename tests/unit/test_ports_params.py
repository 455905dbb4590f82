"""Dynamic ports from the slot record to the node: the workload's environment, the Consul
registration and its check, the service meta a new leader adopts them from, the record."""

from __future__ import annotations

from dataclasses import replace

import pytest

from walle.adapters.consul.health import ClusterHealth
from walle.core import Capacity, Node, apply_plan, reconcile
from walle.core.testing import make_job, make_node
from walle.jobspec import parse_spec
from walle.service import params
from walle.service.adopt import sort_out, unrecorded
from walle.service.cluster import Snapshot
from walle.service.records import alloc_from_dict, alloc_to_dict

GIB = 1024 ** 3


def web(**extra):
    return parse_spec({
        "name": "web", "kind": "service", "count": 2,
        "resources": {"cpu": 0.1, "memory": "64M"},
        "runtime": {"command": "/usr/bin/python3",
                    "args": ["-m", "http.server", "${WALLE_PORT_HTTP}", "$HOME"]},
        "ports": [{"label": "http"}, {"label": "admin", "static": 9000}],
        "service": {"port": "http"}, "health": {"type": "http", "path": "/", **extra}})


def test_the_workload_sees_each_labels_port_and_port_for_the_first():
    work = params.workload_args(web(), 1, ports={"http": 20417})
    env = work["env"]
    assert (env["WALLE_PORT_HTTP"], env["WALLE_PORT_ADMIN"], env["PORT"]) == \
        ("20417", "9000", "20417")
    assert env["WALLE_PORT"] == "20417"  # the service's port, as before
    assert work["expand_env"] == ["WALLE_PORT_HTTP", "WALLE_PORT_ADMIN"]
    assert work["args"] == ["-m", "http.server", "${WALLE_PORT_HTTP}", "$HOME"]


def test_a_job_without_named_ports_has_no_port_variables_to_expand():
    work = params.workload_args(make_job("plain"), 0)
    assert "expand_env" not in work and "PORT" not in work["env"]


def test_an_instance_without_its_assigned_port_is_refused_naming_the_label():
    with pytest.raises(ValueError, match="'http'"):
        params.workload_args(web(), 0, ports={})


def test_the_registration_and_its_check_carry_the_instances_own_port():
    svc = params.service_args(web(), 1, "10.77.1.12", ports={"http": 20417})
    assert svc["port"] == 20417
    assert svc["check_http"] == "http://10.77.1.12:20417/"
    assert svc["meta"]["walle_ports"] == "http=20417"
    admin = params.service_args(web(port="admin"), 1, "10.77.1.12", ports={"http": 20417})
    assert admin["port"] == 20417 and admin["check_http"] == "http://10.77.1.12:9000/"


def test_a_static_service_port_registers_as_before():
    spec = parse_spec({"name": "old", "kind": "service", "resources": {"cpu": 1,
                       "memory": "64M"}, "runtime": {"command": "/bin/true"},
                       "service": {"port": 8080}, "health": {"type": "tcp"}})
    svc = params.service_args(spec, 0, "10.77.1.12")
    assert svc["port"] == 8080 and svc["check_tcp"] == "10.77.1.12:8080"
    assert "walle_ports" not in svc["meta"]
    assert spec.to_dict().get("ports") is None  # digests of existing specs do not move


def test_the_slot_record_keeps_the_ports():
    spec = replace(web(), count=1)
    (alloc,) = apply_plan((), reconcile({"web": spec}, (), [make_node("n1")], seed=3, now=0.0))
    assert dict(alloc.dynamic_ports).keys() == {"http"}
    body = alloc_to_dict(alloc)
    assert alloc_from_dict("web", 0, body) == alloc
    assert alloc_from_dict("web", 0, {k: v for k, v in body.items()
                                      if k != "dynamic_ports"}).dynamic_ports == ()


def test_a_new_leader_adopting_a_running_instance_keeps_its_registered_ports():
    spec = web()
    nodes = {n: Node(n, Capacity(4, 8 * GIB)) for n in ("n1", "n2")}
    snap = Snapshot(jobs={"web": spec}, stored_jobs={}, records={}, nodes=nodes, addresses={},
                    health=ClusterHealth(1, [], {("n2", "web-0"): "passing"}))
    meta = {"walle_job": "web", "walle_slot": "0", "walle_digest": spec.digest(),
            **params.ports_meta(spec, {"http": 23456})}
    claims = sort_out(snap, {}, unrecorded(snap, {}), {("n2", "web-0"): meta}, frozenset(),
                      now=1.0)
    assert claims.records["web-0"].alloc.dynamic_ports == (("http", 23456),)
    assert params.ports_from_meta({"walle_ports": "http=9x"}) == ()
