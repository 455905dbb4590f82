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
from walle.service import autoscale
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


def test_cpu_use_from_the_exporters_scales_the_job(cluster, monkeypatch):
    """metric cpu: the mean cpu_percent of the running instances (walle-exporter /summary)
    in percent of resources.cpu max; the fake exporter says each uses 0.9 of its 1 core."""
    def exporters(api, snap):
        return {(r.alloc.node, key): {"cpu_percent": 90.0, "memory_bytes": 1}
                for key, r in snap.records.items() if r.alloc.state == "running"}

    monkeypatch.setattr(autoscale, "_exporter_usage", exporters)
    clock = Clock()
    s, _ = make_scheduler(cluster, clock, autoscale_interval=5)
    StateStore(cluster).put_job(web_spec(count=1, cpu="0.5-1", **scaling("cpu", 45)), 0)
    s.step()  # placed, not yet running: nothing measured, so nothing changes
    assert count(cluster) == 1
    clock.now += 6
    s.step()  # running now
    clock.now += 6
    s.step()
    assert count(cluster) == 2  # 90% of the target 45%: twice the instances
    assert "cpu % of resources.cpu max = 90" in events(cluster, "autoscaled")[-1].message
    assert events(cluster, "autoscale failed") == []  # "not running yet" is no failure
    s.lock.step_down()


def test_running_instances_no_exporter_measures_is_an_event(cluster, monkeypatch):
    monkeypatch.setattr(autoscale, "_exporter_usage", lambda api, snap: {})
    clock = Clock()
    s, _ = make_scheduler(cluster, clock, autoscale_interval=5)
    StateStore(cluster).put_job(web_spec(count=1, **scaling("memory", 50)), 0)
    for _ in range(3):
        s.step()
        clock.now += 6
    (failed,) = events(cluster, "autoscale failed")
    assert "no memory measurement from walle-exporter" in failed.message
    assert count(cluster) == 1
    s.lock.step_down()
