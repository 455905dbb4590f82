"""roles/lb: walle-lb-sync turns the jobs in Consul KV that ask for a balancer into HAProxy
frontends and server-template backends; job values are data that pass an allow-list, never
text copied into haproxy.cfg; every file passes `haproxy -c` before it replaces the old one."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jinja2
import pytest
import yaml

from walle.adapters.consul.state import encode_job, job_key
from walle.jobspec import parse_spec

ROLE = Path(__file__).resolve().parents[2] / "roles/lb"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
needs_haproxy = pytest.mark.skipif(not Path(HAPROXY).exists(),
                                   reason="haproxy missing: scripts/setup.sh installs it")


def _load_sync():
    spec = importlib.util.spec_from_file_location("walle_lb_sync", ROLE / "files/walle_lb_sync.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


lbsync = _load_sync()
SETTINGS = lbsync.Settings(reserved_ports=(8404,))


def job(job_name: str = "web", count: int = 3, **service) -> dict:
    """A real spec, as `walle run` stores it in KV (encode_job)."""
    spec = parse_spec({
        "name": job_name, "kind": "service", "count": count,
        "resources": {"cpu": "0.1", "memory": "64M"},
        "runtime": {"command": "/usr/bin/python3", "args": ["-m", "http.server", "8080"]},
        "service": {"port": 8080, **service},
    })
    return {"Key": job_key(spec.name), "Value": base64.b64encode(encode_job(spec)).decode()}


def raw_entry(key: str, value: object) -> dict:
    """A KV entry anyone with KV write could have left: not validated by the spec parser."""
    return {"Key": key, "Value": base64.b64encode(json.dumps(value).encode()).decode()}


def raw_job(name: str = "evil", service_name: object = "evil", port: object = 8080,
            lb: object = None, kind: str = "service") -> dict:
    return raw_entry(f"walle/jobs/{name}", {"version": "x", "spec": {
        "name": name, "kind": kind, "count": 1,
        "service": {"name": service_name, "port": port, "lb": lb or {"port": 81}}}})


def render_base(**overrides) -> str:
    variables = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    variables.update(ansible_managed="managed", walle_lb_dns_nameserver="127.0.0.1:8600",
                     **overrides)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True)
    return env.get_template("00-walle-base.cfg.j2").render(**variables)


def test_a_service_on_a_dynamic_port_gets_its_frontend_too():
    spec = parse_spec({
        "name": "web", "kind": "service", "count": 3,
        "resources": {"cpu": "0.1", "memory": "64M"},
        "runtime": {"command": "/usr/bin/python3",
                    "args": ["-m", "http.server", "${WALLE_PORT_HTTP}"]},
        "ports": [{"label": "http"}], "service": {"port": "http", "lb": {"port": 80}}})
    entry = {"Key": job_key("web"), "Value": base64.b64encode(encode_job(spec)).decode()}
    frontends, problems = lbsync.frontends_from_kv([entry], SETTINGS)
    assert problems == [] and [(f.service, f.port) for f in frontends] == [("web", 80)]


def test_a_frontend_per_service_that_asks_for_one():
    entries = [job("web", lb={"port": 80}), job("api", count=40, lb={"port": 81, "mode": "tcp"}),
               job("plain")]
    frontends, problems = lbsync.frontends_from_kv(entries, SETTINGS)
    assert problems == []
    assert frontends == [lbsync.Frontend("web", 80, "http", 16),
                         lbsync.Frontend("api", 81, "tcp", 48)]  # 40 -> whole steps of 16
    text = lbsync.render(frontends, SETTINGS)
    assert "frontend walle-web-80\n    mode http\n    bind *:80\n    default_backend walle-web" \
        in text
    assert ("server-template web 16 _web._tcp.service.consul resolvers consul "
            "resolve-prefer ipv4 init-addr none check") in text
    assert "backend walle-api\n    mode tcp\n    balance roundrobin\n    server-template" in text
    assert "backend walle-web\n    mode http\n    balance roundrobin\n    retry-on conn-failure " \
        "empty-response\n    http-request disable-l7-retry if !METH_GET\n" in text
    assert "plain" not in text


@pytest.mark.parametrize(("count", "parallel", "slots"), [
    (6, 1, 16), (15, 1, 16), (16, 1, 32), (13, 3, 16), (14, 3, 32), (40, 1, 48)])
def test_slots_hold_the_count_and_the_instances_an_update_runs_beside_it(count, parallel, slots):
    """A rolling update keeps each old instance registered until its replacement passes, so
    count + update.max_parallel instances can be in DNS at once; one beyond the template's
    slots would get no traffic, so the slots cover them (in whole steps of min_slots)."""
    spec = parse_spec({
        "name": "web", "kind": "service", "count": count,
        "resources": {"cpu": "0.1", "memory": "64M"},
        "runtime": {"command": "/usr/bin/python3", "args": ["-m", "http.server", "8080"]},
        "update": {"max_parallel": parallel},
        "service": {"port": 8080, "lb": {"port": 80}},
    })
    entry = {"Key": job_key(spec.name), "Value": base64.b64encode(encode_job(spec)).decode()}
    (frontend,), problems = lbsync.frontends_from_kv([entry], SETTINGS)
    assert problems == [] and frontend.slots == slots
    assert f"server-template web {slots} " in lbsync.render([frontend], SETTINGS)


def test_jobs_without_a_balancer_or_not_services_give_no_frontend():
    batch = raw_job("nightly", "nightly", kind="batch")
    frontends, problems = lbsync.frontends_from_kv([job("plain"), batch], SETTINGS)
    assert frontends == [] and problems == []


@pytest.mark.parametrize("entry, reason", [
    (raw_job(service_name="web\n    bind *:22"), "service.name is not a DNS label"),
    (raw_job(service_name="web # x"), "service.name is not a DNS label"),
    (raw_job(service_name="Web"), "service.name is not a DNS label"),
    (raw_job(service_name=["web"]), "service.name is not a DNS label"),
    (raw_job(name="web\nbind"), "the job name is not a DNS label"),
    (raw_job(lb={"port": "80\n    bind *:22"}), "service.lb.port is not a port number"),
    (raw_job(lb={"port": True}), "service.lb.port is not a port number"),
    (raw_job(lb={"port": 70000}), "service.lb.port is not a port number"),
    (raw_job(lb={"port": 8404}), "used by the lb host itself"),
    (raw_job(lb={"port": 81, "mode": "http\n    bind *:22"}), "service.lb.mode is not one of"),
    (raw_job(lb=["port", 81]), "service.lb is not a mapping"),
    (raw_job(port="8080 check"), "service.port is neither a port number nor one of"),
    (raw_job(port="http"), "service.port is neither a port number nor one of"),  # no ports
    (raw_entry("walle/jobs/broken", "not a job"), "the value has no spec mapping"),
    ({"Key": "walle/jobs/garbage", "Value": "%%%"}, "the value has no spec mapping"),
])
def test_a_bad_value_in_kv_is_left_out_with_its_reason_and_injects_nothing(entry, reason):
    frontends, problems = lbsync.frontends_from_kv([entry, job("web", lb={"port": 80})],
                                                   SETTINGS)
    assert frontends == [lbsync.Frontend("web", 80, "http", 16)]  # the others go on
    assert len(problems) == 1 and reason in problems[0], problems
    text = lbsync.render(frontends, SETTINGS)
    assert ":22" not in text and "evil" not in text
    assert "\n" not in problems[0]  # the journal gets one line, the job's name escaped


def test_every_rendered_line_is_one_of_the_directives_it_writes():
    names = ["a", "web-1", "x" * 63]
    entries = [job(f"j{i}", name=n, lb={"port": 1000 + i}) for i, n in enumerate(names)]
    text = lbsync.render(lbsync.frontends_from_kv(entries, SETTINGS)[0], SETTINGS)
    allowed = re.compile(
        r"(#.*|"
        r"frontend walle-[a-z0-9-]+-\d+|backend walle-[a-z0-9-]+|"
        r"    mode (http|tcp)|    bind \*:\d+|    default_backend walle-[a-z0-9-]+|"
        r"    balance roundrobin|"
        r"    retry-on conn-failure empty-response|    http-request disable-l7-retry if !METH_GET|"
        r"    server-template [a-z0-9-]+ \d+ _[a-z0-9-]+\._tcp\.service\.consul resolvers "
        r"consul resolve-prefer ipv4 init-addr none check|)")
    assert all(allowed.fullmatch(line) for line in text.splitlines()), text


def test_a_contested_lb_port_goes_to_the_first_job_by_name():
    entries = [job("zeta", lb={"port": 80}), job("alpha", lb={"port": 80})]
    frontends, problems = lbsync.frontends_from_kv(entries, SETTINGS)
    assert [f.service for f in frontends] == ["alpha"]
    assert problems == ["job 'zeta': left out: lb port 80 is taken by service alpha"]


def test_jobs_of_one_service_share_its_frontend_and_one_service_has_one_mode():
    same = [job("web-a", name="web", lb={"port": 80}),
            job("web-b", name="web", count=20, lb={"port": 80})]
    frontends, problems = lbsync.frontends_from_kv(same, SETTINGS)
    assert frontends == [lbsync.Frontend("web", 80, "http", 32)] and problems == []
    mixed = [job("web-a", name="web", lb={"port": 80}),
             job("web-b", name="web", lb={"port": 81, "mode": "tcp"})]
    frontends, problems = lbsync.frontends_from_kv(mixed, SETTINGS)
    assert [f.port for f in frontends] == [80]
    assert "one service has one mode" in problems[0]


@needs_haproxy
def test_the_base_and_rendered_services_pass_haproxy_check(tmp_path):
    base = tmp_path / "00-walle-base.cfg"
    base.write_text(render_base())
    entries = [job("web", lb={"port": 8080}), job("db", lb={"port": 5432, "mode": "tcp"})]
    text = lbsync.render(lbsync.frontends_from_kv(entries, SETTINGS)[0], SETTINGS)
    services = tmp_path / "50-services.cfg"
    assert lbsync.install(text, str(services), str(base), HAPROXY) == "changed"
    assert services.read_text() == text
    assert lbsync.install(text, str(services), str(base), HAPROXY) == "unchanged"
    base_text = base.read_text()
    for directive in ("retries 3", "option redispatch 1", "on-marked-down shutdown-sessions",
                      "nameserver consul 127.0.0.1:8600", "timeout connect 1s"):
        assert directive in base_text


@needs_haproxy
def test_a_config_haproxy_refuses_never_replaces_the_running_one(tmp_path):
    base = tmp_path / "00-walle-base.cfg"
    base.write_text(render_base())
    services = tmp_path / "50-services.cfg"
    services.write_text("# the good one\n")
    # backends naming resolvers the base file does not have: only `haproxy -c` sees it
    broken = lbsync.render([lbsync.Frontend("web", 80, "http", 16)],
                           lbsync.Settings(resolvers="nowhere"))
    with pytest.raises(ValueError, match="nowhere"):
        lbsync.install(broken, str(services), str(base), HAPROXY)
    assert services.read_text() == "# the good one\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [base.name, services.name]  # no temp


class _FakeKv:
    """/v1/kv/walle/jobs/?recurse of a Consul agent, from a list the test sets."""

    def __init__(self, entries: list[dict]) -> None:
        self.entries = entries
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                body = json.dumps(outer.entries).encode()
                self.send_response(200 if outer.entries else 404)
                self.send_header("X-Consul-Index", "7")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.addr = f"http://127.0.0.1:{self.server.server_address[1]}"


@needs_haproxy
def test_sync_once_reloads_only_when_the_frontends_change(tmp_path):
    base = tmp_path / "00-walle-base.cfg"
    base.write_text(render_base())
    services, reloads = tmp_path / "50-services.cfg", tmp_path / "reloads"
    kv = _FakeKv([job("web", lb={"port": 8080})])
    argv = ["--consul", kv.addr, "--config", str(services), "--base", str(base),
            "--haproxy", HAPROXY, "--once", "--reserved-port", "8404", "--reload",
            f"{sys.executable} -c \"open('{reloads}', 'a').write('r')\""]
    try:
        assert lbsync.main(argv) == 0
        assert "frontend walle-web-8080" in services.read_text()
        assert reloads.read_text() == "r"
        assert lbsync.main(argv) == 0  # nothing changed: no reload
        assert reloads.read_text() == "r"
        kv.entries = []  # the job is gone (KV answers 404): its frontend goes
        assert lbsync.main(argv) == 0
        assert "frontend" not in services.read_text() and reloads.read_text() == "rr"
    finally:
        kv.server.shutdown()


def test_every_default_is_prefixed_and_in_the_argument_specs():
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    spec = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, value in defaults.items():
        assert name.startswith("walle_lb_"), name
        assert options[name].get("description"), name
        if isinstance(value, str) and "{{" in value:
            assert "default" not in options[name], f"{name}: templated, no literal default"
        elif "default" in options[name]:
            assert options[name]["default"] == value, f"{name}: argument_specs default differs"
