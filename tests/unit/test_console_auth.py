"""The console's token check against a Consul that enforces ACLs, played by a small loopback
HTTP server: a token Consul refuses is 403 before anything is written; a token Consul knows
but that may not write gets 403 from the write itself; ACLs off takes any non-empty token."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from walle.adapters.consul import ConsulConfig
from walle.console.actions import Refused, authorize, perform

GOOD, READ_ONLY = "good-token", "read-only-token"


class AclConsul(BaseHTTPRequestHandler):
    """/v1/acl/token/self knows GOOD and READ_ONLY; every KV read refuses READ_ONLY with
    Consul's 403 text; ACLs can be switched off (401 "ACL support disabled")."""

    acl_enabled = True
    seen: list[tuple[str, str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802
        token = self.headers.get("X-Consul-Token")
        self.seen.append(("GET", self.path, token))
        if self.path.startswith("/v1/acl/token/self"):
            if not self.acl_enabled:
                return self._reply(401, "ACL support disabled")
            if token in (GOOD, READ_ONLY):
                return self._reply(200, json.dumps({"AccessorID": "a", "SecretID": token}))
            return self._reply(403, "ACL not found")
        if token == READ_ONLY:
            return self._reply(403, "Permission denied: token lacks permission 'key:read'")
        return self._reply(404, "")

    def _reply(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Consul-Index", "1")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def consul() -> Iterator[ConsulConfig]:
    AclConsul.acl_enabled, AclConsul.seen = True, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), AclConsul)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield ConsulConfig.from_env(addr=f"127.0.0.1:{server.server_address[1]}", env={})
    finally:
        server.shutdown()
        server.server_close()


def test_a_token_consul_does_not_know_is_refused_before_any_write(consul):
    with pytest.raises(Refused) as err:
        perform(consul, "stolen", "scale", {"job": "web", "count": 3}, None)
    assert err.value.status == 403 and "ACL not found" in str(err.value)
    assert [p for _, p, _ in AclConsul.seen] == ["/v1/acl/token/self"]


def test_no_token_is_refused_without_asking_consul(consul):
    for token in (None, "", "  "):
        with pytest.raises(Refused) as err:
            perform(consul, token, "scale", {"job": "web", "count": 3}, None)
        assert err.value.status == 401
    assert AclConsul.seen == []


def test_a_known_token_acts_with_itself_and_consul_refusing_the_action_is_403(consul):
    assert authorize(consul, GOOD).config.token == GOOD
    AclConsul.seen.clear()
    with pytest.raises(Refused) as err:
        perform(consul, READ_ONLY, "scale", {"job": "web", "count": 3}, None)
    assert err.value.status == 403 and "Permission denied" in str(err.value)
    assert {t for _, _, t in AclConsul.seen} == {READ_ONLY}  # only the operator's token


def test_with_acls_off_any_non_empty_token_is_taken(consul):
    AclConsul.acl_enabled = False
    assert authorize(consul, "anything").config.token == "anything"
