"""A tiny in-memory key-value store over HTTP: GET/PUT/DELETE /kv/<key>, GET /health.
Python standard library only; the data lives as long as the process."""
import http.server
import os
import threading

DATA: dict[str, bytes] = {}
LOCK = threading.Lock()
MAX_VALUE = 64 * 1024


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _key(self):
        return self.path[len("/kv/"):] if self.path.startswith("/kv/") else None

    def do_GET(self):
        if self.path == "/health":
            return self._send(200, b"ok\n")
        with LOCK:
            value = DATA.get(self._key())
        self._send(404) if value is None else self._send(200, value)

    def do_PUT(self):
        size = int(self.headers.get("Content-Length") or 0)
        if self._key() is None or size > MAX_VALUE:
            return self._send(400)
        value = self.rfile.read(size)
        with LOCK:
            DATA[self._key()] = value
        self._send(204)

    def do_DELETE(self):
        with LOCK:
            DATA.pop(self._key(), None)
        self._send(204)


http.server.ThreadingHTTPServer(("", int(os.environ["KVSTORE_PORT"])), Handler).serve_forever()
