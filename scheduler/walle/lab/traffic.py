"""Client traffic for the lab: a steady, bounded request stream through a load balancer and a
reader of HAProxy's stats, for the lab tests and bench/lb.py.

The stream sends `rate` requests per second (one at a time on a fixed schedule, a new
connection each, so no keep-alive hides a dead backend) until stopped, `max_requests` are sent
or `max_seconds` pass: it always stops by itself. Every request is kept: when it was sent, how
long it took, whether it succeeded and what answered (the body's first line, e.g. the address
of the instance that served it).
"""

from __future__ import annotations

import csv
import io
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass

from walle.jobspec import JobSpec, parse_spec

# A service instance that answers GET with the address it was reached on (its node's), so a
# client through a load balancer sees which instance served each request. One line: a job's
# arguments may not hold newlines.
_ANSWER_ADDRESS = "; ".join([
    "import http.server as h",
    "B = lambda s: s.connection.getsockname()[0].encode() + bytes([10])",
    "R = lambda s: (s.send_response(200), s.send_header('Content-Length', str(len(B(s)))), "
    "s.end_headers(), s.wfile.write(B(s)))",
    "H = type('H', (h.BaseHTTPRequestHandler,), {'do_GET': R, 'log_message': lambda s, *a: 0})",
    "h.ThreadingHTTPServer(('', {port}), H).serve_forever()",
])


def echo_service_spec(name: str, count: int, port: int, lb_port: int,
                      avoid: str | None = None) -> JobSpec:
    """A service behind the load balancer whose instances answer with their node's address:
    one per node (a static port), never on `avoid` (e.g. the lb host), checked every second."""
    constraints: list[dict] = [{"operator": "distinct_hosts"}]
    if avoid:
        constraints.append({"attribute": "name", "operator": "ne", "value": avoid})
    return parse_spec({
        "name": name, "kind": "service", "count": count, "strategy": "spread",
        "resources": {"cpu": "0.05-0.5", "memory": "32M-96M"},
        "runtime": {"command": "/usr/bin/python3",
                    "args": ["-c", _ANSWER_ADDRESS.replace("{port}", str(port))],
                    "working_dir": "/tmp"},
        "constraints": constraints,
        "health": {"type": "http", "path": "/", "port": port, "interval": "1s", "timeout": "1s"},
        "stop": {"timeout": "5s"},
        "service": {"port": port, "lb": {"port": lb_port}},
    }, source=f"lab {name}")


@dataclass(frozen=True)
class Reply:
    sent: float  # time.monotonic() when the request left
    seconds: float  # until the answer (or the error)
    ok: bool
    answer: str  # first line of a 200 body, or the error's name

    @property
    def done(self) -> float:
        return self.sent + self.seconds


class Stream:
    def __init__(self, url: str, rate: float = 20.0, max_requests: int = 6000,
                 max_seconds: float = 600.0, timeout: float = 5.0) -> None:
        self.url, self.interval, self.timeout = url, 1.0 / rate, timeout
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.replies: list[Reply] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-traffic", daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> list[Reply]:
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return self.snapshot()

    def snapshot(self, since: float = 0.0, until: float = float("inf")) -> list[Reply]:
        with self._lock:
            return [r for r in self.replies if since <= r.sent < until]

    def _run(self) -> None:
        start = time.monotonic()
        for n in range(self.max_requests):
            due = start + n * self.interval
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            if time.monotonic() - start > self.max_seconds:
                return
            reply = self._one()
            with self._lock:
                self.replies.append(reply)

    def _one(self) -> Reply:
        sent = time.monotonic()
        try:
            request = urllib.request.Request(self.url, headers={"Connection": "close"})
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                body = response.read(4096).decode(errors="replace")
            return Reply(sent, time.monotonic() - sent, True, body.split("\n", 1)[0].strip())
        except (OSError, urllib.error.URLError, ValueError) as exc:
            name = f"HTTP {exc.code}" if isinstance(exc, urllib.error.HTTPError) else \
                type(exc).__name__
            return Reply(sent, time.monotonic() - sent, False, name)


def summary(replies: list[Reply]) -> dict:
    """Requests sent and failed, the longest gap between two successful answers (seconds; the
    time a client saw no success), the slowest request, and who answered how often."""
    done = sorted(r.done for r in replies if r.ok)
    gaps = [b - a for a, b in zip(done, done[1:], strict=False)]
    return {
        "sent": len(replies),
        "failed": sum(not r.ok for r in replies),
        "longest_gap_s": round(max(gaps, default=0.0), 3),
        "slowest_s": round(max((r.seconds for r in replies), default=0.0), 3),
        "answers": dict(Counter(r.answer for r in replies if r.ok)),
        "errors": dict(Counter(r.answer for r in replies if not r.ok)),
    }


@dataclass(frozen=True)
class Server:
    backend: str
    name: str
    address: str  # "ip:port", or "" while the slot is unresolved
    status: str  # UP, DOWN, MAINT, "MAINT (resolution)", "no check"...
    sessions: int  # total sessions HAProxy sent it (stot)


def haproxy_servers(stats_url: str, timeout: float = 2.0) -> list[Server]:
    """The servers of every backend from HAProxy's stats page in CSV (`<stats uri>;csv`)."""
    with urllib.request.urlopen(f"{stats_url};csv", timeout=timeout) as reply:  # noqa: S310
        text = reply.read().decode()
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return [Server(row["pxname"], row["svname"], row.get("addr") or "", row["status"],
                   int(row["stot"] or 0))
            for row in rows if row["svname"] not in ("FRONTEND", "BACKEND")]
