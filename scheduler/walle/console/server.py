"""`walle ui`: the web console's HTTP server (standard library only).

GET  /                          the page (static/index.html, console.css, console.js)
GET  /api/state                 the pool, jobs, instances, packages (views.state_view), polled
GET  /api/explain?job=NAME      `walle plan NAME --explain` as JSON
POST /api/action/<name>         scale, stop, drain, install, with the operator's Consul token

Reads use the console's own Consul settings (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN...); actions
use only the token sent with them (actions.py). Against cross-site requests an action must be
a POST with a JSON body and the X-Walle-Console header (a page on another origin cannot send
that header without a CORS preflight, which this server never grants), and the Host and
Origin must be this server's.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from walle.adapters.consul import ConsulApi, ConsulConfig, ConsulError, RetryPolicy, StateStore
from walle.catalog import Catalog, CatalogError
from walle.cli.metrics import read_usage
from walle.cli.package import installed_packages
from walle.console import views
from walle.console.actions import Refused, perform
from walle.service.cluster import Snapshot, load_snapshot
from walle.service.dryrun import published_defaults, published_in_flight, published_presence
from walle.service.history import from_data

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/console.css": ("console.css", "text/css; charset=utf-8"),
         "/console.js": ("console.js", "text/javascript; charset=utf-8")}
# No inline script or style, nothing from elsewhere: injected markup could not run anyway.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ACTION_HEADER = "X-Walle-Console"
MAX_BODY = 64 * 1024
USAGE_EVERY_S = 10.0
READ_RETRY = RetryPolicy(attempts=2, base=0.2, cap=0.5, total=2.0)


class UsageSampler:
    """Instances' memory use from each node's walle-exporter (cli/metrics.py read_usage), read
    in the background every USAGE_EVERY_S: a node that does not answer costs its timeout
    there, never in the page's poll."""

    def __init__(self, api: ConsulApi, every: float = USAGE_EVERY_S):
        self.api, self.every = api, every
        self.usage: dict = {}
        self.read_at: float | None = None
        self.latest: Snapshot | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-usage", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def note(self) -> str:
        if self.read_at is None:
            return "memory use: not read yet (from each node's walle-exporter, every 10 s)"
        age = time.monotonic() - self.read_at
        return f"memory use from each node's walle-exporter, read {age:.0f} s ago"

    def _run(self) -> None:
        while not self._stop.wait(self.every if self.read_at else 1.0):
            if self.latest is None:
                continue
            try:
                self.usage = read_usage(self.api, self.latest)
                self.read_at = time.monotonic()
            except ConsulError as err:
                print(f"walle ui: usage not read: {err}", file=sys.stderr)


class Console:
    """What the handler asks: views built from fresh snapshots, and actions."""

    def __init__(self, config: ConsulConfig, catalog: Catalog | None, usage: bool = True):
        self.config = config
        self.api = ConsulApi(config, retry=READ_RETRY)
        self.store = StateStore(self.api)
        self.catalog = catalog
        self.sampler = UsageSampler(self.api) if usage else None

    def state(self) -> dict:
        snap = load_snapshot(self.api, self.store)
        if self.sampler:
            self.sampler.latest = snap
            usage, note = self.sampler.usage, self.sampler.note()
        else:
            usage, note = {}, "memory use: not read (walle ui --no-usage)"
        try:
            installed, packages_error = installed_packages(self.store), None
        except CatalogError as err:  # a malformed record: say so, show the rest
            installed, packages_error = {}, f"installed packages cannot be read: {err}"
        _, stored = self.store.events()
        histories = {job: from_data(body) for job, (body, _) in stored.items()}
        doc = views.state_view(snap, installed=installed, usage=usage, usage_note=note,
                               histories=histories)
        doc["packages_error"] = packages_error
        doc["catalog"] = views.catalog_view(self.catalog)
        doc["consul"] = self.config.address
        return doc

    def explain(self, job: str) -> dict | None:
        defaults, _ = published_defaults(self.store)
        return views.explanation_view(load_snapshot(self.api, self.store), job, defaults,
                                      presence=published_presence(self.store),
                                      in_flight=published_in_flight(self.store))

    def act(self, action: str, token: str | None, body: Any) -> str:
        return perform(self.config, token, action, body, self.catalog)


def make_handler(console: Console, allowed_hosts: frozenset[str] | None):
    """`allowed_hosts`: the Host values this server answers to (None: any, when it listens
    on every address); a page reached through another name (DNS rebinding) gets 421."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "walle-ui"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._answer(self._post)

        def _answer(self, method) -> None:
            """Any bug below is a 500 with its traceback on stderr, never a dropped
            connection the page cannot explain."""
            if not self._host_ok():
                return
            try:
                method()
            except ConnectionError:
                pass  # the page went away (closed, reloaded) before its answer: nobody to tell
            except Exception:  # noqa: BLE001 - reported to the page and logged
                traceback.print_exc()
                self._json(500, {"error": "the console failed on this request; its log has "
                                          "the traceback"})

        def _get(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path in FILES:
                name, kind = FILES[url.path]
                self._send(200, (STATIC / name).read_bytes(), kind)
            elif url.path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            elif url.path == "/api/state":
                self._json_from(console.state)
            elif url.path == "/api/explain":
                job = urllib.parse.parse_qs(url.query).get("job", [""])[0]
                self._json_from(lambda: console.explain(job)
                                or _not_found(f"no job {job!r} in Consul"))
            else:
                self._json(404, {"error": f"no page {url.path!r}"})

        def _post(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if not url.path.startswith("/api/action/"):
                self._json(404, {"error": f"no action at {url.path!r}"})
                return
            problem = self._cross_site_problem()
            if problem:
                self._json(403, {"error": problem})
                return
            try:
                body = self._read_json()
                message = console.act(url.path.rsplit("/", 1)[1],
                                      self.headers.get("X-Consul-Token"), body)
            except Refused as err:
                self._json(err.status, {"error": str(err)})
                return
            self._json(200, {"message": message})

        def _host_ok(self) -> bool:
            if allowed_hosts is None or self.headers.get("Host", "") in allowed_hosts:
                return True
            self._json(421, {"error": "unknown Host: open the console by the address it "
                                      "listens on"})
            return False

        def _cross_site_problem(self) -> str | None:
            if self.headers.get(ACTION_HEADER) != "1":
                return f"actions need the {ACTION_HEADER} header (sent by the console page)"
            if self.headers.get_content_type() != "application/json":
                return "actions need a JSON body (Content-Type: application/json)"
            origin = self.headers.get("Origin")
            if origin and urllib.parse.urlsplit(origin).netloc != self.headers.get("Host"):
                return "actions are accepted only from the console's own page"
            return None

        def _read_json(self) -> Any:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError as err:
                raise Refused(400, "bad Content-Length") from err
            if not 0 < length <= MAX_BODY:
                raise Refused(400 if length <= 0 else 413,
                              f"expected a JSON body of at most {MAX_BODY} bytes")
            try:
                return json.loads(self.rfile.read(length))
            except ValueError as err:
                raise Refused(400, f"the body is not JSON: {err}") from err

        def _json_from(self, build) -> None:
            try:
                doc = build()
            except Refused as err:
                self._json(err.status, {"error": str(err)})
                return
            except ConsulError as err:
                self._json(503, {"error": str(err)})
                return
            self._json(200, doc)

        def _json(self, status: int, doc: Mapping) -> None:
            body = json.dumps(doc, default=str).encode()
            self._send(status, body, "application/json")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for key, value in SECURITY_HEADERS.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass  # requests carry tokens in headers only, but keep the log quiet anyway

    return Handler


def _not_found(message: str):
    raise Refused(404, message)


def allowed_hosts_for(host: str, port: int) -> frozenset[str] | None:
    if host in ("", "0.0.0.0", "::"):
        return None
    names = {host, f"[{host}]"} if ":" in host else {host}
    if host in ("127.0.0.1", "::1", "localhost"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return frozenset(f"{name}:{port}" for name in names)


@contextlib.contextmanager
def serving(console: Console, host: str, port: int) -> Iterator[ThreadingHTTPServer]:
    """Bind (port 0: a free one) and serve in a background thread until the block ends
    (`.server_address` tells the port)."""
    server = ThreadingHTTPServer((host, port), make_handler(console, None))
    server.daemon_threads = True
    server.RequestHandlerClass = make_handler(
        console, allowed_hosts_for(host, server.server_address[1]))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="console-http", daemon=True)
    thread.start()
    if console.sampler:
        console.sampler.start()
    try:
        yield server
    finally:
        if console.sampler:
            console.sampler.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
