"""Fixtures for tests that talk to a Consul HTTP API.

`consul_addr` is CONSUL_HTTP_ADDR when set (a real Consul), else a Walle Consul stand-in
(lab/test only) started on free loopback ports for the session. Tests using only
`consul_addr`/`consul_client`/`consul_dns` must pass unchanged against a real Consul; tests of
stand-in-only behaviour take the `standin` fixture, which skips against a real Consul.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

import consul
from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
from walle.lab.consul_standin import Standin, start_in_thread

SECOND_AGENT = "walle-test-node2"


def _real_consul_addr() -> str | None:
    raw = os.environ.get("CONSUL_HTTP_ADDR")
    if not raw:
        return None
    return urlsplit(raw if "://" in raw else f"http://{raw}").netloc


@pytest.fixture(scope="session")
def _session_standin(tmp_path_factory) -> Iterator[Standin | None]:
    if _real_consul_addr():
        yield None
        return
    standin = start_in_thread(data_dir=tmp_path_factory.mktemp("consul-standin"),
                              node_name="walle-test-server",
                              agents={SECOND_AGENT: ("127.0.0.1", 0)})
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture(scope="session")
def consul_addr(_session_standin) -> str:
    real = _real_consul_addr()
    if real:
        return real
    host, port = _session_standin.http_addr
    return f"{host}:{port}"


@pytest.fixture
def addr(tmp_path) -> Iterator[str]:
    """The URL of a Consul stand-in of this test's own, empty at the start (`consul_addr` is the
    session's shared one): for tests that read back everything there is."""
    own = start_in_thread(data_dir=tmp_path / "consul", node_name="walle-test-server", dns=None)
    host, port = own.http_addr
    try:
        yield f"http://{host}:{port}"
    finally:
        own.stop()


@pytest.fixture
def store(addr) -> StateStore:
    """A StateStore on the test's own stand-in (`addr`)."""
    return StateStore(ConsulApi(ConsulConfig.from_env(addr=addr)))


@pytest.fixture
def consul_client(consul_addr) -> consul.Consul:
    host, _, port = consul_addr.rpartition(":")
    return consul.Consul(host=host, port=int(port))


@pytest.fixture(scope="session")
def consul_dns(_session_standin) -> tuple[str, int]:
    """DNS of the Consul under test: CONSUL_DNS_ADDR (default 127.0.0.1:8600) for a real one."""
    if _session_standin is None:
        host, _, port = os.environ.get("CONSUL_DNS_ADDR", "127.0.0.1:8600").rpartition(":")
        return host, int(port)
    return _session_standin.dns_addr


@pytest.fixture
def standin(_session_standin) -> Standin:
    if _session_standin is None:
        pytest.skip("stand-in specific: CONSUL_HTTP_ADDR points at a real Consul")
    return _session_standin


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Per-test names, so tests never see each other's keys, services or events."""
    tag = uuid.uuid4().hex[:8]
    return lambda prefix: f"{prefix}-{tag}"


def _wait_until(predicate: Callable[[], object], timeout_s: float, step_s: float = 0.1):
    """Poll `predicate` until truthy (returned) or fail after timeout_s; bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(step_s)


@pytest.fixture
def wait_until() -> Callable[..., object]:
    return _wait_until


class _Probe(BaseHTTPRequestHandler):
    """/status/<code> answers that HTTP status; used as an HTTP check target."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        code = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/status/") else 404
        body = f"status {code}".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def probe_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
