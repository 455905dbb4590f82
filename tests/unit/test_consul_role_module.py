"""walle_consul_service against a fake agent: open_url is replaced by an in-memory agent that
keeps services and checks the way Consul's agent API describes them."""

import io
import json
from urllib.error import HTTPError, URLError

import pytest
from ansible.module_utils.common import warnings as ansible_warnings
from ansible.module_utils.testing import patch_module_args
from module_harness import load_module

mod = load_module("walle_consul_service")  # with plugins/module_utils on its import path


class FakeAgent:
    """GET /v1/agent/service/<id>, GET /v1/agent/checks, PUT register/deregister."""

    def __init__(self):
        self.services = {}
        self.checks = {}
        self.calls = []

    def open_url(self, url, method="GET", data=None, headers=None, **kw):
        path = url.split("://", 1)[1].split("/", 1)[1]
        self.calls.append((method, "/" + path, headers or {}))
        if path.startswith("v1/agent/service/register"):
            body = json.loads(data)
            sid = body.get("ID") or body["Name"]
            self.services[sid] = {
                "ID": sid, "Service": body["Name"], "Tags": body.get("Tags") or [],
                "Meta": body.get("Meta") or {}, "Port": body.get("Port", 0),
                "Address": body.get("Address", ""), "Weights": {"Passing": 1, "Warning": 1},
                "EnableTagOverride": False, "ContentHash": "abc123", "Datacenter": "dc1"}
            self.checks = {k: v for k, v in self.checks.items() if v["ServiceID"] != sid}
            if "Check" in body:
                self.checks[f"service:{sid}"] = {"ServiceID": sid, "Status": "critical"}
            return Response(200, "")
        if path.startswith("v1/agent/service/deregister/"):
            sid = path.rsplit("/", 1)[1]
            self.services.pop(sid, None)
            self.checks = {k: v for k, v in self.checks.items() if v["ServiceID"] != sid}
            return Response(200, "")
        if path.startswith("v1/agent/service/"):
            sid = path.rsplit("/", 1)[1]
            if sid not in self.services:
                raise HTTPError(url, 404, "Not Found", {}, io.BytesIO(b"unknown service ID"))
            return Response(200, json.dumps(self.services[sid]))
        if path == "v1/agent/checks":
            return Response(200, json.dumps(self.checks))
        raise AssertionError(f"unexpected {method} {url}")

    @property
    def writes(self):
        return [c for c in self.calls if c[0] == "PUT"]


class Response:
    def __init__(self, code, text):
        self.code, self.text = code, text

    def getcode(self):
        return self.code

    def read(self):
        return self.text.encode()


def run(agent, monkeypatch, check_mode=False, diff=True, **args):
    monkeypatch.setattr(mod, "open_url", agent.open_url)
    args.update(_ansible_check_mode=check_mode, _ansible_diff=diff)
    with patch_module_args(args), pytest.raises(SystemExit):
        mod.main()


@pytest.fixture
def out(capsys):
    def read():
        return json.loads(capsys.readouterr().out)
    return read


WEB = dict(service_id="web-0", name="web", address="10.77.0.11", port=8080, tags=["v1"],
           meta={"walle_job": "web"}, check_type="http",
           check_http="http://10.77.0.11:8080/health", check_interval="2s",
           check_timeout="1s", token="secret")


def test_create_then_idempotent(monkeypatch, out):
    agent = FakeAgent()
    run(agent, monkeypatch, **WEB)
    first = out()
    assert first["changed"] and first["operation"] == "create"
    body = agent.services["web-0"]
    assert body["Tags"] == ["v1"] and body["Port"] == 8080
    assert all(h.get("X-Consul-Token") == "secret" for _, _, h in agent.calls)
    writes = len(agent.writes)
    run(agent, monkeypatch, **WEB)
    second = out()
    assert not second["changed"] and second["operation"] == "none"
    assert len(agent.writes) == writes


def test_registration_body_has_check_and_deregister_after(monkeypatch, out):
    agent = FakeAgent()
    sent = []
    real = agent.open_url

    def spy(url, method="GET", data=None, **kw):
        if method == "PUT" and "register" in url:
            sent.append((url, json.loads(data)))
        return real(url, method=method, data=data, **kw)

    monkeypatch.setattr(mod, "open_url", spy)
    with patch_module_args(dict(WEB, deregister_critical_after="90s")), \
            pytest.raises(SystemExit):
        mod.main()
    out()
    url, body = sent[0]
    assert url.endswith("/v1/agent/service/register?replace-existing-checks=true")
    assert body["Check"] == {"Name": "web http", "HTTP": "http://10.77.0.11:8080/health",
                             "Interval": "2s", "Timeout": "1s",
                             "DeregisterCriticalServiceAfter": "90s"}


def test_changed_check_or_tags_update(monkeypatch, out):
    agent = FakeAgent()
    run(agent, monkeypatch, **WEB)
    out()
    run(agent, monkeypatch, **dict(WEB, check_interval="5s"))
    res = out()
    assert res["changed"] and res["operation"] == "update"
    run(agent, monkeypatch, **dict(WEB, check_interval="5s", tags=["v2"]))
    res = out()
    assert res["diff"]["before"]["Tags"] == ["v1"] and res["diff"]["after"]["Tags"] == ["v2"]


def test_missing_check_is_reregistered(monkeypatch, out):
    agent = FakeAgent()
    run(agent, monkeypatch, **WEB)
    out()
    agent.checks.clear()  # e.g. removed out of band
    run(agent, monkeypatch, **WEB)
    assert out()["changed"]


def test_check_mode_writes_nothing(monkeypatch, out):
    agent = FakeAgent()
    run(agent, monkeypatch, check_mode=True, **WEB)
    res = out()
    assert res["changed"] and agent.writes == [] and agent.services == {}


def test_absent_removes_then_is_a_noop(monkeypatch, out):
    agent = FakeAgent()
    run(agent, monkeypatch, **WEB)
    out()
    run(agent, monkeypatch, service_id="web-0", state="absent")
    res = out()
    assert res["changed"] and res["operation"] == "remove" and "web-0" not in agent.services
    run(agent, monkeypatch, service_id="web-0", state="absent")
    assert not out()["changed"]


def test_ttl_check(monkeypatch, out):
    agent = FakeAgent()
    run(agent, monkeypatch, name="etl", check_type="ttl", check_ttl="30")
    res = out()
    assert res["check"]["TTL"] == "30s" and res["check"]["CheckID"] == "service:etl"


@pytest.mark.parametrize("args,option", [
    (dict(WEB, deregister_critical_after="30s"), "deregister_critical_after"),
    (dict(WEB, check_interval="soon"), "check_interval"),
    (dict(WEB, port=70000), "port"),
    (dict(WEB, meta={"consul-x": "1"}), "meta"),
    (dict(WEB, meta={"k": "v" * 513}), "meta"),
    (dict(WEB, check_type="tcp", check_tcp="nohost"), "check_tcp"),
])
def test_bad_input_fails_naming_the_option(monkeypatch, out, args, option):
    run(FakeAgent(), monkeypatch, **args)
    res = out()
    assert res["failed"] and res["option"] == option and option in res["msg"]


@pytest.mark.parametrize(("option", "given", "sent"), [
    ("check_interval", "1.5", "1500ms"),  # plain seconds, as before
    ("check_interval", "1m30s", "90s"),
    ("check_timeout", "250ms", "250ms"),
    ("deregister_critical_after", "1d", "86400s"),  # the spec's grammar: days too
])
def test_durations_follow_the_spec_grammar(monkeypatch, out, option, given, sent):
    run(FakeAgent(), monkeypatch, **dict(WEB, **{option: given}))
    key = {"check_interval": "Interval", "check_timeout": "Timeout",
           "deregister_critical_after": "DeregisterCriticalServiceAfter"}[option]
    assert out()["check"][key] == sent


def test_a_duration_outside_the_grammar_is_refused_naming_the_option(monkeypatch, out):
    run(FakeAgent(), monkeypatch, **dict(WEB, check_interval="100us"))
    res = out()
    assert res["failed"] and res["option"] == "check_interval"


def test_required_if_check_fields(monkeypatch, out):
    run(FakeAgent(), monkeypatch, name="web", check_type="http")
    res = out()
    assert res["failed"] and "check_http" in res["msg"]


def test_unreachable_agent_is_a_clear_failure(monkeypatch, out):
    def refuse(url, **kw):
        raise URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(mod, "open_url", refuse)
    with patch_module_args(dict(WEB, consul_addr="http://127.0.0.1:1")), \
            pytest.raises(SystemExit):
        mod.main()
    res = out()
    assert res["failed"] and "127.0.0.1:1" in res["msg"]


def test_token_is_not_logged(monkeypatch, out):
    agent = FakeAgent()
    run(agent, monkeypatch, **WEB)
    assert "secret" not in json.dumps(out())


# ----------------------------------------------------------------------------- token and TLS

class RecordingAgent(FakeAgent):
    """Also keeps the TLS keywords of every open_url call."""

    def __init__(self):
        super().__init__()
        self.tls = []

    def open_url(self, url, method="GET", data=None, headers=None, **kw):
        self.tls.append({"url": url, **{k: kw.get(k) for k in (
            "validate_certs", "ca_path", "client_cert", "client_key")}})
        return super().open_url(url, method=method, data=data, headers=headers, **kw)


PLAIN = {k: v for k, v in WEB.items() if k != "token"}


def token_file(tmp_path, text="s3cr3t-from-file\n", mode=0o600):
    path = tmp_path / "consul-token"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_no_token_means_no_header(monkeypatch, out):
    agent = FakeAgent()
    run(agent, monkeypatch, **PLAIN)
    assert out()["changed"]
    assert agent.calls and all("X-Consul-Token" not in h for _, _, h in agent.calls)


def test_token_file_is_read_on_the_node_and_sent_as_the_header(monkeypatch, out, tmp_path):
    agent = FakeAgent()
    run(agent, monkeypatch, token_file=token_file(tmp_path), **PLAIN)
    res = out()
    assert res["changed"] and res["operation"] == "create"
    assert agent.calls and all(h.get("X-Consul-Token") == "s3cr3t-from-file"
                               for _, _, h in agent.calls)
    assert "s3cr3t-from-file" not in json.dumps(res)


def test_the_token_never_reaches_result_diff_or_invocation(monkeypatch, out, tmp_path):
    # A token that also appears in a service field must still be masked everywhere: Ansible
    # removes no_log values from the whole result, including the diff and the invocation.
    agent = FakeAgent()
    run(agent, monkeypatch, **dict(WEB, token="web-secret-tag", tags=["web-secret-tag"]))
    text = json.dumps(out())
    assert "web-secret-tag" not in text
    run(FakeAgent(), monkeypatch, token_file=token_file(tmp_path, "v1"), **PLAIN)
    res = out()
    assert "v1" not in json.dumps(res["diff"]) and "v1" not in json.dumps(res["service"])


def test_invocation_shows_the_token_masked(monkeypatch, out):
    run(FakeAgent(), monkeypatch, **WEB)
    res = out()
    assert res["invocation"]["module_args"]["token"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


@pytest.mark.parametrize("problem", ["missing", "empty", "both"])
def test_token_file_problems_fail_naming_the_option(monkeypatch, out, tmp_path, problem):
    args = dict(PLAIN, token_file=str(tmp_path / "nope"))
    if problem == "empty":
        args["token_file"] = token_file(tmp_path, "  \n")
    if problem == "both":
        args.update(token_file=token_file(tmp_path), token="secret")
    agent = FakeAgent()
    run(agent, monkeypatch, **args)
    res = out()
    assert res["failed"] and "token_file" in res["msg"], res
    assert agent.calls == []


def test_https_and_tls_options_reach_open_url(monkeypatch, out):
    agent = RecordingAgent()
    run(agent, monkeypatch, consul_addr="https://127.0.0.1:8501", ca_file="/etc/walle/ca.pem",
        client_cert="/etc/walle/c.pem", client_key="/etc/walle/c.key", **WEB)
    assert out()["changed"]
    assert agent.tls and all(t["url"].startswith("https://127.0.0.1:8501/v1/") for t in agent.tls)
    assert {(t["ca_path"], t["client_cert"], t["client_key"], t["validate_certs"])
            for t in agent.tls} == {("/etc/walle/ca.pem", "/etc/walle/c.pem",
                                     "/etc/walle/c.key", True)}


def test_validate_certs_false_is_passed_on(monkeypatch, out):
    agent = RecordingAgent()
    run(agent, monkeypatch, consul_addr="https://127.0.0.1:8501", validate_certs=False, **WEB)
    assert out()["changed"]
    assert {t["validate_certs"] for t in agent.tls} == {False}


def test_client_cert_needs_its_key(monkeypatch, out):
    run(RecordingAgent(), monkeypatch, client_cert="/etc/walle/c.pem", **WEB)
    res = out()
    assert res["failed"] and "client_key" in res["msg"]


def test_consul_addr_must_be_an_http_url(monkeypatch, out):
    run(FakeAgent(), monkeypatch, **dict(WEB, consul_addr="ftp://127.0.0.1:8500"))
    res = out()
    assert res["failed"] and res.get("option") == "consul_addr"


def test_a_token_file_others_can_read_is_warned_about(monkeypatch, out, tmp_path):
    # warnings are process-global (each real module run is its own process): start empty
    monkeypatch.setattr(ansible_warnings, "_global_warnings", {})
    run(FakeAgent(), monkeypatch, token_file=token_file(tmp_path, mode=0o644), **PLAIN)
    res = out()
    assert res["changed"]
    warnings = json.dumps(res.get("warnings", []))  # ansible 2.19: structured summaries
    assert "mode 0644" in warnings and "chmod 0600" in warnings, res
    monkeypatch.setattr(ansible_warnings, "_global_warnings", {})
    run(FakeAgent(), monkeypatch, token_file=token_file(tmp_path, mode=0o600), **PLAIN)
    assert not out().get("warnings")


# ----- a check registered with the status its own probe saw (no wait for Consul's stagger)
def sent_checks(agent, monkeypatch):
    """The Check of every registration the module sends."""
    sent = []
    real = agent.open_url

    def spy(url, method="GET", data=None, **kw):
        if method == "PUT" and "register" in url:
            sent.append(json.loads(data).get("Check"))
        return real(url, method=method, data=data, **kw)

    monkeypatch.setattr(mod, "open_url", spy)
    return sent


def register(monkeypatch, **args):
    with patch_module_args(args), pytest.raises(SystemExit):
        mod.main()


@pytest.fixture
def http_server():
    """A local HTTP server whose answer code the test sets."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        code = 200

        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(Handler.code)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, Handler
    server.shutdown()


def test_a_check_that_passes_its_probe_is_registered_passing(monkeypatch, out, http_server):
    server, _ = http_server
    agent = FakeAgent()
    sent = sent_checks(agent, monkeypatch)
    url = f"http://127.0.0.1:{server.server_port}/health"
    register(monkeypatch, **dict(WEB, check_http=url, initial_probe_wait=1.0))
    result = out()
    assert sent[0]["Status"] == "passing" and result["check_status"] == "passing"
    assert "Status" not in result["check"]  # the digest (idempotence) ignores the status
    register(monkeypatch, **dict(WEB, check_http=url, initial_probe_wait=1.0))
    assert not out()["changed"] and len(sent) == 1


@pytest.mark.parametrize("code", [500, 429])
def test_a_check_that_fails_its_probe_starts_critical(monkeypatch, out, http_server, code):
    server, handler = http_server
    handler.code = code  # 429 is Consul's warning, never passing
    agent = FakeAgent()
    sent = sent_checks(agent, monkeypatch)
    url = f"http://127.0.0.1:{server.server_port}/health"
    register(monkeypatch, **dict(WEB, check_http=url, initial_probe_wait=0.3))
    assert "Status" not in sent[0] and out()["check_status"] == "critical"


def test_tcp_probe_and_no_probe_by_default(monkeypatch, out, http_server):
    server, _ = http_server
    agent = FakeAgent()
    sent = sent_checks(agent, monkeypatch)
    tcp = dict(WEB, check_type="tcp", check_tcp=f"127.0.0.1:{server.server_port}")
    register(monkeypatch, **tcp)
    assert "Status" not in sent[0] and out()["check_status"] == "critical"
    register(monkeypatch, **dict(tcp, service_id="web-1", initial_probe_wait=1.0))
    assert sent[1]["Status"] == "passing"


def test_a_closed_port_is_not_passing(monkeypatch, out):
    import socket
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent = FakeAgent()
    sent = sent_checks(agent, monkeypatch)
    register(monkeypatch, **dict(WEB, check_type="tcp", check_tcp=f"127.0.0.1:{port}",
                                 initial_probe_wait=0.3))
    assert "Status" not in sent[0] and out()["check_status"] == "critical"


def test_ttl_checks_and_check_mode_are_never_probed(monkeypatch, out):
    from ansible_collections.walle.pool.plugins.module_utils import walle_consul

    def no_probe(check, timeout):
        raise AssertionError("probed")

    monkeypatch.setattr(walle_consul, "probe_check", no_probe)
    assert walle_consul.initial_status({"TTL": "30s"}, 5.0, probe=no_probe) is None
    agent = FakeAgent()
    sent = sent_checks(agent, monkeypatch)
    register(monkeypatch, **dict(WEB, initial_probe_wait=5.0, _ansible_check_mode=True))
    assert out()["changed"] and sent == []


def test_the_probe_never_waits_longer_than_the_agents_first_run():
    from ansible_collections.walle.pool.plugins.module_utils import walle_consul
    now = [0.0]
    probes = []

    def probe(check, timeout):
        probes.append(now[0])
        return False

    def sleep(s):
        now[0] += s

    check = {"HTTP": "http://127.0.0.1:1/", "Interval": "1s", "Timeout": "1s"}
    assert walle_consul.initial_status(check, 5.0, probe=probe, clock=lambda: now[0],
                                       sleep=sleep) is None
    assert probes and max(probes) < 1.0  # bounded by the 1 s interval, not the 5 s asked


def test_a_service_without_a_check_reports_no_check_status(monkeypatch, out):
    agent = FakeAgent()
    register_args = dict(WEB, check_type="none", initial_probe_wait=1.0)
    monkeypatch.setattr(mod, "open_url", agent.open_url)
    register(monkeypatch, **register_args)
    result = out()
    assert result["changed"] and "check_status" not in result
