"""The console's JSON views, built from a hand-made snapshot: the picture of the pool (zones,
racks, node health and reservations), jobs with their instances, and the explanation."""

import json

from walle.adapters.consul import NodeInfo
from walle.adapters.consul.health import ClusterHealth
from walle.catalog import Installed
from walle.console.views import EVENTS_SHOWN, explanation_view, node_health, state_view
from walle.core import Allocation, Capacity
from walle.jobspec import parse_spec
from walle.service.cluster import Snapshot, core_node
from walle.service.history import JobHistory, SlotEvent
from walle.service.records import SlotRecord

GIB = 1024 ** 3
XSS = '<img src=x onerror="alert(1)">'


def snapshot(n3_health: str = "passing") -> Snapshot:
    infos = [NodeInfo("n1", "10.77.9.11", cpu=4, memory=8 * GIB, zone="z1", rack="r1",
                      health="passing", schedulable=True),
             NodeInfo("n2", "10.77.9.12", cpu=4, memory=8 * GIB, zone="z1", rack="r2",
                      health="passing", schedulable=True),
             NodeInfo("n3", "10.77.9.13", cpu=2, memory=4 * GIB, zone="z2", rack="r1",
                      health=n3_health, schedulable=True),
             NodeInfo("n4", "10.77.9.14", health="passing",
                      problems=("node meta has no walle_cpu",))]
    spec = parse_spec({"name": "web", "kind": "service", "count": 3,
                       "resources": {"cpu": "0.5-1", "memory": "1G"},
                       "runtime": {"command": "/bin/true"}, "service": {"port": 80}})
    records = {
        f"web-{slot}": SlotRecord(Allocation(
            "web", slot, node, Capacity(0.5, GIB), Capacity(1, GIB), "d", "r", state=state),
            reason=reason)
        for slot, node, state, reason in ((0, "n1", "running", ""),
                                          (1, "n1", "pending", ""),
                                          (2, "n2", "failed", XSS))
    }
    health = ClusterHealth(7, infos, {("n1", "web-0"): "passing", ("n1", "web-1"): "warning",
                                      ("n2", "other"): "critical"})
    nodes = {i.name: core_node(i, i.name == "n2") for i in infos if i.schedulable}
    return Snapshot({"web": spec}, {}, records, nodes, {i.name: i.address for i in infos},
                    health)


def boxes(view: dict) -> dict[str, dict]:
    return {n["name"]: n for z in view["pool"] for r in z["racks"] for n in r["nodes"]}


def test_nodes_are_grouped_by_zone_and_rack():
    view = state_view(snapshot(), installed={}, usage={}, usage_note="")
    layout = [(z["zone"], [(r["rack"], [n["name"] for n in r["nodes"]]) for r in z["racks"]])
              for z in view["pool"]]
    assert layout == [("", [("", ["n4"])]), ("z1", [("r1", ["n1"]), ("r2", ["n2"])]),
                      ("z2", [("r1", ["n3"])])]


def test_a_node_box_is_filled_by_its_live_instances_and_coloured_by_the_worst_check():
    usage = {("n1", "web-0"): {"memory_bytes": 300}, ("n1", "web-1"): {"memory_bytes": 200}}
    n = boxes(state_view(snapshot(), installed={}, usage=usage, usage_note=""))
    assert n["n1"]["reserved_cpu"] == 1.0 and n["n1"]["reserved_memory"] == 2 * GIB
    assert n["n1"]["used_memory"] == 500
    assert [i["instance"] for i in n["n1"]["instances"]] == ["web-0", "web-1"]
    assert n["n1"]["health"] == "warning"  # web-1's check warns
    assert n["n2"]["health"] == "critical" and n["n2"]["state"] == "draining"
    assert n["n2"]["reserved_cpu"] == 0 and n["n2"]["used_memory"] is None  # failed: not live
    assert n["n3"]["health"] == "passing" and n["n3"]["state"] == "ready"
    assert n["n4"]["state"] == "not schedulable"
    assert n["n4"]["problems"] == ["node meta has no walle_cpu"]


def test_a_node_whose_serf_health_fails_is_down():
    n = boxes(state_view(snapshot("critical"), installed={}, usage={}, usage_note=""))
    assert n["n3"]["health"] == "down" and n["n3"]["state"] == "down"


def test_node_health_ranks_maintenance_as_warning_and_unknown_checks_as_critical():
    info = NodeInfo("n", "a", health="maintenance")
    assert node_health(info, []) == "warning"
    assert node_health(NodeInfo("n", "a", health="passing"), ["passing", "odd"]) == "critical"
    assert node_health(NodeInfo("n", "a", health="unknown"), []) == "down"


def test_jobs_carry_their_instances_with_state_health_and_reason_as_data():
    view = state_view(snapshot(), installed={}, usage={}, usage_note="")
    (job,) = view["jobs"]
    assert (job["job"], job["count"], job["running"], job["pending"], job["failed"]) == \
        ("web", 3, 1, 1, 1)
    rows = {i["instance"]: i for i in job["instances"]}
    assert rows["web-1"]["health"] == "warning" and rows["web-0"]["health"] == "passing"
    assert rows["web-2"]["reason"] == XSS  # kept as it is: the page shows it as text
    assert view["events"] == []  # no histories given
    json.dumps(view)  # the page gets it as JSON


def test_events_are_the_newest_of_every_job_newest_first_and_kept_as_data():
    """The console once said "Walle keeps no event log yet"; it shows `walle events` now."""
    web = JobHistory().add([SlotEvent(time=100.0 + n, event="placed", message=f"m{n}", slot=n,
                                      node="n1") for n in range(60)])
    etl = JobHistory().add([SlotEvent(time=150.5, event="finished", message=XSS, slot=0,
                                      node="n2")])
    view = state_view(snapshot(), installed={}, usage={}, usage_note="",
                      histories={"web": web, "etl": etl})
    events = view["events"]
    assert len(events) == EVENTS_SHOWN
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)
    assert events[0]["message"] == "m59"
    assert any(e["job"] == "etl" and e["message"] == XSS for e in events)


def test_installed_packages_are_listed_with_their_values():
    installed = {"kvstore": Installed.from_json("kvstore", {
        "version": "1.0.0", "values": {"port": 6379}, "jobs": ["kvstore"],
        "dependencies": {}, "service": None}, 5)}
    view = state_view(snapshot(), installed=installed, usage={}, usage_note="")
    assert view["packages"] == [{"name": "kvstore", **installed["kvstore"].to_json()}]


def test_the_explanation_is_what_plan_explain_computes():
    exp = explanation_view(snapshot(), "web")
    assert exp["job"] == "web" and exp["chosen"] in ("n1", "n3")
    verdicts = {v["node"]: v for v in exp["verdicts"]}
    assert verdicts["n2"]["reasons"]  # draining: refused, with the reason
    assert explanation_view(snapshot(), "nope") is None
