"""walle.lab.traffic: the figures of a client stream (failed requests, longest gap) and the
servers read from HAProxy's stats CSV."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from walle.lab.traffic import Reply, Stream, haproxy_servers, summary

CSV = ("# pxname,svname,qcur,stot,status,addr,\n"
       "walle-front-80,FRONTEND,,12,OPEN,,\n"
       "walle-front,front1,,7,UP,10.77.0.11:8080,\n"
       "walle-front,front2,,5,DOWN,10.77.0.12:8080,\n"
       "walle-front,front3,,0,MAINT (resolution),,\n"
       "walle-front,BACKEND,,12,UP,,\n")


def test_summary_counts_failures_and_the_longest_time_without_a_success():
    replies = [Reply(0.0, 0.01, True, "a"), Reply(0.05, 0.01, True, "b"),
               Reply(0.10, 1.0, False, "HTTP 503"), Reply(0.15, 0.01, False, "TimeoutError"),
               Reply(1.50, 0.02, True, "a")]
    figures = summary(replies)
    assert (figures["sent"], figures["failed"]) == (5, 2)
    assert figures["longest_gap_s"] == round(1.52 - 0.06, 3)
    assert figures["answers"] == {"a": 2, "b": 1}
    assert figures["errors"] == {"HTTP 503": 1, "TimeoutError": 1}
    assert summary([])["longest_gap_s"] == 0.0


def _serve(body: bytes):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_servers_come_from_the_stats_csv_without_frontends_and_backends():
    server, url = _serve(CSV.encode())
    try:
        servers = haproxy_servers(f"{url}/stats")
    finally:
        server.shutdown()
    assert [(s.name, s.address, s.status, s.sessions) for s in servers] == [
        ("front1", "10.77.0.11:8080", "UP", 7), ("front2", "10.77.0.12:8080", "DOWN", 5),
        ("front3", "", "MAINT (resolution)", 0)]


def test_the_stream_is_bounded_and_records_what_answered():
    server, url = _serve(b"10.77.0.11\n")
    try:
        stream = Stream(url, rate=50, max_requests=10, max_seconds=5).start()
        stream._thread.join(5)  # it stops by itself after max_requests
        replies = stream.snapshot()
    finally:
        server.shutdown()
    assert len(replies) == 10 and all(r.ok and r.answer == "10.77.0.11" for r in replies)
