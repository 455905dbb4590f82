"""A hit counter over HTTP that keeps its count in the kvstore package it depends on.
It finds the store from WALLE_DEP_KVSTORE_SERVICE (<service>.service.consul, via DNS) and
WALLE_DEP_KVSTORE_PORT; where the node has no .consul DNS it asks the local Consul agent."""
import http.server
import json
import os
import socket
import urllib.request

STORE = os.environ["WALLE_DEP_KVSTORE_SERVICE"]
STORE_PORT = int(os.environ["WALLE_DEP_KVSTORE_PORT"])
GREETING = os.environ.get("APP_GREETING", "hello")
VERSION = os.environ.get("APP_VERSION", "?")
CONSUL = os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500")


def store_address():
    try:
        return socket.gethostbyname(STORE), STORE_PORT
    except OSError:
        service = STORE.split(".")[0]
        with urllib.request.urlopen(f"{CONSUL}/v1/health/service/{service}?passing=1",
                                    timeout=2) as answer:
            entry = json.load(answer)[0]
        return entry["Service"]["Address"] or entry["Node"]["Address"], STORE_PORT


def store(method, key, body=None):
    host, port = store_address()
    request = urllib.request.Request(f"http://{host}:{port}/kv/{key}", data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return answer.read()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body, code = b"ok\n", 200
        else:
            try:
                hits = int(store("GET", "hits") or 0) + 1
                store("PUT", "hits", str(hits).encode())
                body, code = f"{GREETING} from kv-app {VERSION}: hit {hits}\n".encode(), 200
            except OSError as err:
                body, code = f"store {STORE} unreachable: {err}\n".encode(), 503
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("", int(os.environ["APP_PORT"])), Handler).serve_forever()
