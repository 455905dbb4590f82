"""Runs the HTTP and TCP checks registered through agents, on their Interval with Timeout.

HTTP (agent/checks/check.go CheckHTTP): 2xx passing, 429 warning, anything else or no answer
critical; output like Consul's. TCP: a completed connect is passing. One thread per check,
started with a random stagger within the interval as Consul does, stopped when the check goes.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import urllib.error
import urllib.request

from .core import RNG
from .store import Store

log = logging.getLogger("walle.consul_standin.checks")
MAX_OUTPUT = 4096
_RUNNABLE = ("http", "tcp")


def probe_http(spec: dict) -> tuple[str, str]:
    url, method = spec["HTTP"], spec["Method"] or "GET"
    headers = {k: (v[0] if isinstance(v, list) and v else str(v))
               for k, v in (spec["Header"] or {}).items()}
    headers.setdefault("User-Agent", "Consul Health Check")
    body = spec["Body"].encode() if spec["Body"] else None
    handlers: list = [urllib.request.ProxyHandler({})]
    if spec.get("TLSSkipVerify"):
        handlers.append(urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
    opener = urllib.request.build_opener(*handlers)
    try:
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        with opener.open(req, timeout=spec["Timeout"]) as resp:
            code, reason, text = resp.status, resp.reason, resp.read(MAX_OUTPUT)
    except urllib.error.HTTPError as exc:
        code, reason, text = exc.code, exc.reason, exc.read(MAX_OUTPUT)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # e.g. InvalidURL for a URL with whitespace: the check is critical, as in Consul; the
        # check thread must not die of it.
        return "critical", f"Get \"{url}\": {exc}"
    output = f"HTTP {method} {url}: {code} {reason} Output: {text.decode(errors='replace')}"
    if 200 <= code < 300:
        return "passing", output
    return ("warning" if code == 429 else "critical"), output


def probe_tcp(spec: dict) -> tuple[str, str]:
    host, _, port = spec["TCP"].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=spec["Timeout"]):
            return "passing", f"TCP connect {spec['TCP']}: Success"
    except (OSError, ValueError) as exc:
        return "critical", f"dial tcp {spec['TCP']}: {exc}"


class Thresholds:
    """Consul's check StatusHandler: a result changes the check's status only after
    SuccessBeforePassing consecutive passes, or FailuresBeforeWarning / FailuresBeforeCritical
    consecutive failures (api-docs/agent/check, "Register Check")."""

    def __init__(self, spec: dict):
        self.success_before_passing = spec.get("SuccessBeforePassing", 0)
        self.failures_before_critical = spec.get("FailuresBeforeCritical", 0)
        self.failures_before_warning = spec.get("FailuresBeforeWarning",
                                                self.failures_before_critical)
        self.successes = self.failures = 0

    def status_for(self, result: str) -> str | None:
        """The status to record after this probe result, or None to leave it as it is."""
        if result in ("passing", "warning"):
            self.successes, self.failures = self.successes + 1, 0
            return result if self.successes >= self.success_before_passing else None
        self.failures, self.successes = self.failures + 1, 0
        if self.failures >= self.failures_before_critical:
            return "critical"
        if self.failures >= self.failures_before_warning:
            return "warning"
        return None


class _Runner:
    def __init__(self, store: Store, key: tuple[str, str], spec: dict):
        self.store, self.key, self.spec = store, key, dict(spec)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"consul-standin-check-{key[1]}")

    def _run(self) -> None:
        probe = probe_http if self.spec["Type"] == "http" else probe_tcp
        if self.stop_event.wait(RNG.uniform(0, self.spec["Interval"])):
            return
        thresholds = Thresholds(self.spec)
        while not self.stop_event.is_set():
            result, output = probe(self.spec)
            status = thresholds.status_for(result)
            with self.store.write():
                if status and self.store.check_defs.get(self.key) is not None and not \
                        self.stop_event.is_set():
                    self.store.set_check_status(*self.key, status, output[:MAX_OUTPUT])
            self.stop_event.wait(self.spec["Interval"])


class CheckRunners:
    def __init__(self, store: Store):
        self.store = store
        self.runners: dict[tuple[str, str], _Runner] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consul-standin-checks",
                                        daemon=True)
        store.listeners.append(self._wake.set)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        for runner in self.runners.values():
            runner.stop_event.set()

    def sync(self) -> None:
        with self.store.cond:
            wanted = {k: dict(v) for k, v in self.store.check_defs.items()
                      if v["Type"] in _RUNNABLE}
        for key, runner in list(self.runners.items()):
            if wanted.get(key) != runner.spec:
                runner.stop_event.set()
                del self.runners[key]
        for key, spec in wanted.items():
            if key not in self.runners:
                self.runners[key] = _Runner(self.store, key, spec)
                self.runners[key].thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self._stop.is_set():
                self.sync()
