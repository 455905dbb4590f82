"""migrate.yml's Consul health query sends the scheduler's ACL token and honours its CA, and
the token never lands in ansible-runner's artifacts or event data.

A real ansible-runner run of playbooks/migrate.yml on local connections: host `nodeA` already
"placed" instance web-0 (its inventory holds walle_placed, so nothing runs on it), and a tiny
HTTP(S) server on 127.0.0.1 plays Consul's /v1/health/state/any, recording the headers."""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import ansible_runner
import pytest

from walle.adapters import runner

TOKEN = "b1c4f7e2-walle-scheduler-token-93d0"


class FakeConsul(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[tuple[str, dict]] = []

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.requests.append((self.path, dict(self.headers)))
        body = json.dumps([{"Node": "nodeA", "ServiceID": "web-0", "Status": "passing"}])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def consul():
    server = FakeConsul()
    yield server
    server.shutdown()
    server.server_close()


def serve(server: FakeConsul) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
    folder = tmp_path_factory.mktemp("tls")
    crt, key = folder / "ca.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(crt), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def run_migrate(tmp_path: Path, consul_url: str, env: dict[str, str]):
    """migrate.yml through ansible-runner, keeping every artifact and event on disk."""
    inventory = {"all": {"hosts": {"nodeA": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "walle_placed": ["web-0"]}}}}
    extravars = {"walle_place": {"nodeA": []}, "walle_stop": {}, "walle_consul_addr": consul_url,
                 "walle_health_timeout_s": 2}
    private = tmp_path / "runner"
    private.mkdir(parents=True)
    kwargs = runner.runner_args("migrate.yml", inventory, extravars, ["nodeA", "localhost"],
                                str(private))
    kwargs["envvars"] = {**kwargs["envvars"], **env}
    events: list[dict] = []
    result = ansible_runner.run(**kwargs, event_handler=lambda e: events.append(e) or True,
                                timeout=120)
    return result, events, private


def health_task(events: list[dict]) -> dict:
    return next(e["event_data"] for e in events
                if e.get("event") in ("runner_on_ok", "runner_on_failed")
                and e["event_data"].get("task") == "Consul checks of the new instances")


def test_no_token_configured_sends_no_header(tmp_path, consul):
    serve(consul)
    result, events, _ = run_migrate(tmp_path, consul.url, {})
    assert result.rc == 0, result.stdout.read()
    assert consul.requests and consul.requests[0][0] == "/v1/health/state/any"
    assert all("X-Consul-Token" not in headers for _, headers in consul.requests)
    assert health_task(events)["res"].get("failed") is not True


def test_token_file_is_sent_and_never_recorded(tmp_path, consul):
    serve(consul)
    token_file = tmp_path / "scheduler-consul-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    result, events, private = run_migrate(tmp_path, consul.url,
                                          {"CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    assert result.rc == 0, result.stdout.read()
    assert consul.requests and all(h.get("X-Consul-Token") == TOKEN for _, h in consul.requests)
    assert health_task(events)["res"].get("censored"), "the health query's result is no_log"
    assert TOKEN not in json.dumps(events)
    files = [p for p in private.rglob("*") if p.is_file()]
    assert any("job_events" in str(p) for p in files) and any(p.name == "command" for p in files)
    leaked = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
    assert leaked == []


def test_the_ca_bundle_is_honoured(tmp_path, consul, cert):
    crt, key = cert
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    consul.socket = context.wrap_socket(consul.socket, server_side=True)
    serve(consul)
    result, events, _ = run_migrate(tmp_path / "with-ca", consul.url,
                                    {"CONSUL_CACERT": str(crt)})
    assert result.rc == 0, result.stdout.read()
    assert [path for path, _ in consul.requests] == ["/v1/health/state/any"]

    consul.requests.clear()  # without the CA the certificate is not trusted: no request
    run_migrate(tmp_path / "without-ca", consul.url, {"SSL_CERT_FILE": "/nonexistent"})
    assert consul.requests == []
