#!/usr/bin/python3
"""walle-prometheus-sd: Prometheus HTTP service discovery served from the Consul catalog.

Debian's Prometheus (2.42) is built without consul_sd_configs, so Prometheus asks this small
local server instead (http_sd_configs): GET /targets/<service> answers the catalog's instances
of <service> in Prometheus's HTTP SD format, one target group per instance, labelled with its
node. Standard library only; it runs on the monitoring node with Debian python3.
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def target_groups(catalog: list[dict]) -> list[dict]:
    """/v1/catalog/service/<name> entries -> HTTP SD target groups (address:port + labels)."""
    groups = []
    for entry in catalog:
        address = entry.get("ServiceAddress") or entry.get("Address")
        port = entry.get("ServicePort")
        if not address or not isinstance(port, int) or not 0 < port < 65536:
            continue  # registered without a port: nothing to scrape
        host = f"[{address}]" if ":" in address else address
        groups.append({"targets": [f"{host}:{port}"],
                       "labels": {"node": str(entry.get("Node", "")),
                                  "consul_service": str(entry.get("ServiceName", "")),
                                  "consul_service_id": str(entry.get("ServiceID", ""))}})
    return sorted(groups, key=lambda g: g["targets"])


def fetch_catalog(consul: str, service: str, token: str | None, timeout: float) -> list[dict]:
    url = f"{consul.rstrip('/')}/v1/catalog/service/{urllib.parse.quote(service)}"
    request = urllib.request.Request(url, headers={"X-Consul-Token": token} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - our agent
        return json.load(reply)


def make_handler(consul: str, token: str | None, timeout: float):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            service = path.removeprefix("/targets/")
            if path == "/healthz":
                return self._reply(200, b"ok\n", "text/plain")
            if not path.startswith("/targets/") or not _SERVICE.match(service):
                return self.send_error(404, "try /targets/<service>")
            try:
                groups = target_groups(fetch_catalog(consul, service, token, timeout))
            except (OSError, ValueError, urllib.error.URLError) as exc:
                # Prometheus keeps the last good targets when SD fails: say so, do not lie
                return self.send_error(502, f"catalog unavailable: {type(exc).__name__}")
            self._reply(200, json.dumps(groups).encode(), "application/json")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="walle-prometheus-sd")
    parser.add_argument("--consul", default="http://127.0.0.1:8500", help="Consul HTTP address")
    parser.add_argument("--token-file", help="file holding a Consul token with catalog read")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9852)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    token = None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip() or None
    server = ThreadingHTTPServer((args.address, args.port),
                                 make_handler(args.consul, token, args.timeout))
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
