"""Autoscaling in the leader's step (service/autoscale.py), driven by the recording executor
of test_scheduler_service against a fresh 3-node stand-in and a fake Prometheus on loopback:
the count rises under load at once, falls only after the cooldown, stays within its bounds,
and a failing query keeps the count and is one event; the step goes on throughout."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import test_scheduler_service
from test_scheduler_service import Clock, make_scheduler, records, web_spec

from walle.adapters.consul import StateStore
from walle.naming import instance_id
from walle.service.history import from_data

pytestmark = pytest.mark.consul

cluster = test_scheduler_service.cluster  # the fixture: a fresh stand-in with 3 nodes

QUERY = 'sum(rate(http_requests_total{job="web"}[1m]))'


class FakePrometheus:
    """/api/v1/query answering `value` as a one-sample vector, or `status` with an error."""

    def __init__(self) -> None:
        self.value: float = 0.0
        self.status = 200
        self.series = 1
        self.queries: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                url = urlsplit(self.path)
                fake.queries.append(parse_qs(url.query).get("query", [""])[0])
                if fake.status != 200:
                    body = {"status": "error", "errorType": "bad_data", "error": "parse error"}
                else:
                    sample = {"metric": {}, "value": [1.0, str(fake.value)]}
                    body = {"status": "success",
                            "data": {"resultType": "vector", "result": [sample] * fake.series}}
                raw = json.dumps(body).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def prometheus():
    fake = FakePrometheus()
    yield fake
    fake.server.shutdown()


def scaling(metric, target: float, cooldown: str = "60s", low: int = 1, high: int = 3) -> dict:
    return {"scaling": {"min": low, "max": high, "metric": metric, "target": target,
                        "cooldown": cooldown}}


def count(api) -> int:
    return StateStore(api).job("web").spec["count"]


def events(api, kind: str) -> list:
    _, stored = StateStore(api).events("web")
    return [e for e in from_data(stored["web"][0]).events if e.event == kind]


def test_the_count_follows_a_prometheus_query_within_bounds_and_cooldown(cluster, prometheus):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock, prometheus_addr=prometheus.url,
                           autoscale_interval=5)
    assert StateStore(cluster).put_job(web_spec(count=1, **scaling({"prometheus": QUERY}, 10)),
                                       0)
    prometheus.value = 25.0  # 2.5 times the target per instance
    s.step()
    assert prometheus.queries[-1] == QUERY
    assert count(cluster) == 3  # ceil(1 * 2.5) = 3, also max
    (up,) = events(cluster, "autoscaled")
    assert "count 1 -> 3" in up.message and "= 25" in up.message and "target 10" in up.message
    s.step()
    s.step()
    assert len(records(cluster)) == 3 and len(ex.placed) == 3
    prometheus.value = 100.0  # more load: the bound holds
    clock.now += 5
    s.step()
    assert count(cluster) == 3 and len(events(cluster, "autoscaled")) == 1
    prometheus.value = 2.0  # load gone: held by the cooldown...
    clock.now += 20
    s.step()
    assert count(cluster) == 3
    assert s.autoscaler.next_due() <= clock.now + 60  # ...and the loop wakes when it ends
    clock.now += 41
    s.step()
    assert count(cluster) == 1  # ceil(3 * 0.2) = 1 after 61 s
    assert "count 3 -> 1" in events(cluster, "autoscaled")[-1].message
    s.step()
    assert len(records(cluster)) == 1
    s.lock.step_down()


def test_a_failing_query_keeps_the_count_and_is_one_event_and_the_step_goes_on(cluster,
                                                                              prometheus):
    clock = Clock()
    s, ex = make_scheduler(cluster, clock, prometheus_addr=prometheus.url,
                           autoscale_interval=5)
    StateStore(cluster).put_job(web_spec(count=2, **scaling({"prometheus": QUERY}, 10)), 0)
    prometheus.status = 400
    s.step()
    for _ in range(3):
        clock.now += 6
        s.step()
    assert count(cluster) == 2 and len(records(cluster)) == 2  # placed all the same
    (failed,) = events(cluster, "autoscale failed")
    assert "refused the query (400: parse error)" in failed.message
    assert "the count stays" in failed.message
    prometheus.status, prometheus.series = 200, 2  # another reason: a new event
    clock.now += 6
    s.step()
    assert "gave 2 series" in events(cluster, "autoscale failed")[-1].message
    prometheus.server.shutdown()
    prometheus.server.server_close()  # unreachable
    clock.now += 6
    s.step()
    assert "did not answer" in events(cluster, "autoscale failed")[-1].message
    assert count(cluster) == 2
    s.lock.step_down()


def test_a_prometheus_metric_without_an_address_is_an_event(cluster):
    clock = Clock()
    s, _ = make_scheduler(cluster, clock)
    StateStore(cluster).put_job(web_spec(count=1, **scaling({"prometheus": QUERY}, 10)), 0)
    s.step()
    (failed,) = events(cluster, "autoscale failed")
    assert "--prometheus-addr" in failed.message
    s.lock.step_down()


def running_use(cluster, cpu_percent=90.0):
    """A usage reader (the leader's UsagePoller reads through it) saying each running
    instance uses `cpu_percent` of a core; counts its reads."""
    reads = []

    def read(nodes):
        reads.append(sorted(nodes))
        _, stored = StateStore(cluster).allocs()
        return {(a.node, instance_id(a.job, a.slot)): {"cpu_percent": cpu_percent,
                                                       "memory_bytes": 1}
                for a in stored.values() if a.state == "running"}
    return read, reads


def step_and_read(s, clock, seconds):
    """`seconds` later: a step (which may start a usage reading), the reading arrives, and
    the step it wakes."""
    clock.now += seconds
    s.step()
    s.usage.join(timeout=30)
    s.step()


def test_cpu_use_from_the_exporters_scales_the_job(cluster):
    """metric cpu: the mean cpu_percent of the running instances (walle-exporter /summary)
    in percent of resources.cpu max; the fake exporter says each uses 0.9 of its 1 core."""
    read, _ = running_use(cluster)
    clock = Clock()
    s, _ = make_scheduler(cluster, clock, autoscale_interval=5, usage_reader=read)
    StateStore(cluster).put_job(web_spec(count=1, cpu="0.5-1", **scaling("cpu", 45)), 0)
    s.step()  # placed, not yet running: nothing measured, so nothing changes
    s.usage.join(timeout=30)
    s.step()  # running now; the reading began before: it is not expected in it
    assert count(cluster) == 1
    step_and_read(s, clock, 16)  # a reading of it running
    clock.now += 6
    s.step()
    assert count(cluster) == 2  # 90% of the target 45%: twice the instances
    assert "cpu % of resources.cpu max = 90" in events(cluster, "autoscaled")[-1].message
    assert events(cluster, "autoscale failed") == []  # "not running yet" is no failure
    s.lock.step_down()


def test_running_instances_no_exporter_measures_is_an_event(cluster):
    clock = Clock()
    s, _ = make_scheduler(cluster, clock, autoscale_interval=5, usage_reader=lambda nodes: {})
    StateStore(cluster).put_job(web_spec(count=1, **scaling("memory", 50)), 0)
    for _ in range(3):
        step_and_read(s, clock, 16)
    (failed,) = events(cluster, "autoscale failed")
    assert "no memory measurement from walle-exporter" in failed.message
    assert count(cluster) == 1
    s.lock.step_down()


def test_the_grants_and_the_autoscaler_share_one_usage_reading_per_interval(cluster,
                                                                            monkeypatch):
    """Both consumers of usage on (grants every --usage-interval, a job scaling on cpu every
    --autoscale-interval, 15 s each): each node's exporter /summary is fetched once per
    interval, not once for each (counted at adapters/usage.py fetch_summary, the real
    reader path), and both use what was read."""
    from walle.adapters import usage as usage_adapter
    from walle.adapters.consul.services import ServiceInstance
    fetched: list[str] = []

    def exporters(api, name, passing=False):
        assert name == usage_adapter.EXPORTER_SERVICE
        return 0, [ServiceInstance(f"x-{n}", name, n, "127.0.0.1", 9851)
                   for n in ("node1", "node2", "node3")]

    def summary(exporter, timeout=usage_adapter.SUMMARY_TIMEOUT_S):
        fetched.append(exporter.node)
        _, stored = StateStore(cluster).allocs()
        return {"instances": {instance_id(a.job, a.slot): {"cpu_percent": 50.0}
                              for a in stored.values() if a.node == exporter.node}}

    monkeypatch.setattr(usage_adapter, "service_health", exporters)
    monkeypatch.setattr(usage_adapter, "fetch_summary", summary)
    clock = Clock()
    s, _ = make_scheduler(cluster, clock, autoscale_interval=15, usage_interval=15)
    StateStore(cluster).put_job(web_spec(count=2, cpu="0.5-1", **scaling("cpu", 50, high=4)),
                                0)
    taken = []  # the readings the grants took as samples
    take = s.usage.take
    monkeypatch.setattr(s.usage, "take", lambda: taken.append(take()) or taken[-1])
    s.step()
    s.step()  # both running
    nodes = {a.node for a in StateStore(cluster).allocs()[1].values()}
    assert len(nodes) == 2
    fetched.clear()
    intervals = 4
    for _ in range(intervals):  # steps every 5 s, the readings in between
        for _ in range(3):
            clock.now += 5
            s.step()
            s.usage.join(timeout=30)
    s.step()  # the step the last reading wakes (no new read: not due)
    assert sorted(fetched) == sorted(list(nodes) * intervals)  # one per node per interval
    assert s.usage.latest is not None and s.usage.latest.started > 1_000_000.0
    assert count(cluster) == 2  # the autoscaler measured 50 % against its target 50
    assert events(cluster, "autoscale failed") == []
    samples = [r for r in taken if r is not None and r.started > 1_000_000.0]
    assert len(samples) == intervals  # the grants took each of the same reads, once
    s.lock.step_down()
