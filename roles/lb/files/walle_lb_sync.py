#!/usr/bin/python3
"""walle-lb-sync: HAProxy frontends for the Walle services that ask for one (`service.lb`).

Which frontends exist follows the jobs in Consul KV (`walle/jobs/<name>`, watched with a
blocking query); which servers a backend has follows the instances through HAProxy's own
`server-template` on Consul DNS SRV, so instances moving never rewrite this file nor reload
HAProxy. Only a job asking for, changing or dropping a balancer does: the new file is checked
with `haproxy -c` together with the role's base file before it replaces the old one, then
HAProxy is reloaded (seamlessly: the master keeps the listening sockets).

A job in KV is untrusted data: each value reaches haproxy.cfg only after passing an allow-list
(a DNS label for names, a whole number for ports, one of two words for the mode), never as
text copied through. A job that fails it, or asks for a port another service holds, is left out
with its reason on stderr (the journal); the others are still served. Standard library only:
it runs on the lb hosts with Debian's python3.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

JOBS_PREFIX = "walle/jobs/"
# What may stand in haproxy.cfg as a name: the spec grammar's service/job names (DNS labels)
# are a subset, so every valid job passes; anything with spaces, quotes, '#' or a newline fails.
_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
_LABEL = re.compile(r"[a-z][a-z0-9_]{0,31}")  # a job's port label (jobspec PORT_LABEL)
MODES = ("http", "tcp")
# http backends also retry a request whose server closed without answering (a node dying under
# it), on another server; only GET and HEAD, which a second try cannot do twice
HTTP_RETRIES = ("    retry-on conn-failure empty-response",
                "    http-request disable-l7-retry if !METH_GET")
HEADER = "# Rendered by walle-lb-sync from Consul KV walle/jobs: do not edit, it is replaced.\n"


@dataclass(frozen=True)
class Frontend:
    service: str  # Consul service name: the backend's SRV name
    port: int  # frontend port on the lb host
    mode: str  # http or tcp
    slots: int  # servers the template reserves (instances beyond it get no traffic)


@dataclass(frozen=True)
class Settings:
    bind_address: str = "*"
    min_slots: int = 16  # server-template size: at least this, and count + update.max_parallel
    reserved_ports: tuple[int, ...] = ()  # ports the lb host uses itself (stats)
    resolvers: str = "consul"  # the base file's resolvers section
    domain: str = "service.consul"


def _port(value: object) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
    return value if ok else None


def _count(value: object, default: int) -> int:
    """A count from an unchecked spec: 0..1000, `default` when it is not an integer."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    return min(max(value, 0), 1000) if ok else default


def _names_a_port(spec: dict, label: object) -> bool:
    """service.port names one of the job's `ports`: each instance's own (dynamic) port, which
    the backends learn from the SRV answers like any other."""
    ports = spec.get("ports")
    return isinstance(label, str) and bool(_LABEL.fullmatch(label)) and isinstance(ports, list) \
        and any(isinstance(p, dict) and p.get("label") == label for p in ports)


def frontend_of(key: str, raw: object, settings: Settings) -> tuple[Frontend | None, str | None]:
    """One KV job entry -> its frontend, or None and why not (None, None: it asks for none)."""
    job = key.removeprefix(JOBS_PREFIX)
    if not _NAME.fullmatch(job):
        return None, "the job name is not a DNS label"
    spec = raw.get("spec") if isinstance(raw, dict) else None
    if not isinstance(spec, dict):
        return None, "the value has no spec mapping"
    service = spec.get("service")
    lb = service.get("lb") if isinstance(service, dict) else None
    if lb is None or spec.get("kind") != "service":
        return None, None
    if not isinstance(lb, dict):
        return None, "service.lb is not a mapping"
    name = service.get("name", job)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return None, "service.name is not a DNS label"
    port, mode = _port(lb.get("port")), lb.get("mode", "http")
    if port is None:
        return None, "service.lb.port is not a port number"
    if port in settings.reserved_ports:
        return None, f"service.lb.port {port} is used by the lb host itself"
    if mode not in MODES:
        return None, f"service.lb.mode is not one of {', '.join(MODES)}"
    if _port(service.get("port")) is None and not _names_a_port(spec, service.get("port")):
        return None, "service.port is neither a port number nor one of the job's port labels"
    # instances in DNS at once: the count, plus the old ones a move or an update onto another
    # node keeps registered until their successors pass (update.max_parallel at a time)
    update = spec.get("update")
    parallel = update.get("max_parallel", 1) if isinstance(update, dict) else 1
    wanted = _count(spec.get("count", 1), 1) + _count(parallel, 1)
    slots = max(settings.min_slots, -(-wanted // settings.min_slots)
                * settings.min_slots)  # whole steps of min_slots: scaling rarely re-renders
    return Frontend(name, port, mode, slots), None


def frontends_from_kv(entries: list[dict], settings: Settings) -> tuple[list[Frontend], list[str]]:
    """KV entries (as /v1/kv/walle/jobs/?recurse returns them) -> frontends, and one line per
    job left out. Jobs are taken in name order, so who keeps a contested port is stable."""
    chosen: dict[int, Frontend] = {}
    problems = []
    for entry in sorted(entries, key=lambda e: str(e.get("Key", ""))):
        key = str(entry.get("Key", ""))
        try:
            raw = json.loads(base64.b64decode(entry.get("Value") or b"", validate=True))
        except (ValueError, TypeError):
            raw = None
        frontend, why = frontend_of(key, raw, settings)
        job = ascii(key.removeprefix(JOBS_PREFIX))[:80]
        if why:
            problems.append(f"job {job}: left out: {why}")
        if frontend is None:
            continue
        holder = chosen.get(frontend.port)
        if holder is None:
            chosen[frontend.port] = frontend
        elif holder.service == frontend.service and holder.mode == frontend.mode:
            chosen[frontend.port] = max(holder, frontend, key=lambda f: f.slots)
        else:
            problems.append(f"job {job}: left out: lb port {frontend.port} is taken by service "
                            f"{holder.service}")
    taken: dict[str, Frontend] = {}
    for frontend in sorted(chosen.values(), key=lambda f: f.port):
        other = taken.setdefault(frontend.service, frontend)
        if other is not frontend and other.mode != frontend.mode:
            problems.append(f"service {frontend.service}: lb port {frontend.port} left out: "
                            f"one service has one mode ({other.mode} on port {other.port})")
            del chosen[frontend.port]
    return sorted(chosen.values(), key=lambda f: f.port), problems


def render(frontends: list[Frontend], settings: Settings) -> str:
    """haproxy.cfg frontends and backends. Every value here passed the allow-list above."""
    lines = [HEADER]
    backends = {}
    for f in frontends:
        backends.setdefault(f.service, f)
        lines += [f"frontend walle-{f.service}-{f.port}",
                  f"    mode {f.mode}",
                  f"    bind {settings.bind_address}:{f.port}",
                  f"    default_backend walle-{f.service}", ""]
    for name, f in sorted(backends.items()):
        slots = max(x.slots for x in frontends if x.service == name)
        lines += [f"backend walle-{name}",
                  f"    mode {f.mode}",
                  "    balance roundrobin",
                  *(HTTP_RETRIES if f.mode == "http" else ()),
                  # the instances: SRV answers of Consul DNS (passing ones only), re-resolved
                  # by HAProxy itself; `check` marks a dead one down before DNS drops it
                  f"    server-template {name} {slots} _{name}._tcp.{settings.domain} "
                  f"resolvers {settings.resolvers} resolve-prefer ipv4 init-addr none check", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- I/O


class Consul:
    def __init__(self, addr: str, token: str | None, timeout: float) -> None:
        self.addr, self.token, self.timeout = addr.rstrip("/"), token, timeout

    def jobs(self, index: int, wait: str) -> tuple[int, list[dict]]:
        """Blocking query on walle/jobs/: returns when they change (or after `wait`)."""
        url = f"{self.addr}/v1/kv/{JOBS_PREFIX}?recurse=true&index={index}&wait={wait}"
        request = urllib.request.Request(url, headers={"X-Consul-Token": self.token}
                                         if self.token else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:  # noqa: S310
                new_index = int(reply.headers.get("X-Consul-Index") or 0)
                return new_index, json.load(reply)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # no jobs at all
                return int(exc.headers.get("X-Consul-Index") or 0), []
            raise


def check(base: str, candidate: str, haproxy: str) -> str | None:
    """`haproxy -c` of the base file and a candidate together: None when valid, else why."""
    proc = subprocess.run([haproxy, "-c", "-f", base, "-f", candidate],
                          capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode == 0:
        return None
    alerts = [line for line in (proc.stderr + proc.stdout).splitlines() if "ALERT" in line]
    return "; ".join(alerts)[-2000:] or f"haproxy -c exited with {proc.returncode}"


def install(text: str, target: str, base: str, haproxy: str) -> str | None:
    """Write `text` to `target` if it differs and passes `haproxy -c`. Returns "unchanged",
    "changed", or raises ValueError with haproxy's reason (the old file stays)."""
    try:
        with open(target) as f:
            if f.read() == text:
                return "unchanged"
    except FileNotFoundError:
        pass
    folder = os.path.dirname(target) or "."
    fd, candidate = tempfile.mkstemp(prefix=".candidate-", suffix=".cfg.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(candidate, 0o644)
        why = check(base, candidate, haproxy)
        if why:
            raise ValueError(why)
        os.replace(candidate, target)
        candidate = ""
        return "changed"
    finally:
        if candidate:
            os.unlink(candidate)


def sync_once(consul: Consul, args, settings: Settings, index: int = 0, wait: str = "0s") -> int:
    index, entries = consul.jobs(index, wait)
    frontends, problems = frontends_from_kv(entries, settings)
    for line in problems:
        print(f"walle-lb-sync: {line}", file=sys.stderr)
    try:
        outcome = install(render(frontends, settings), args.config, args.base, args.haproxy)
    except ValueError as exc:
        print(f"walle-lb-sync: haproxy -c refused the new config, keeping the old one: {exc}",
              file=sys.stderr)
        return index
    if outcome == "changed":
        print(f"walle-lb-sync: {len(frontends)} frontend(s): " + ", ".join(
            f"{f.service}:{f.port}" for f in frontends), file=sys.stderr)
        if args.reload:
            subprocess.run(args.reload, shell=False, check=False, timeout=60)
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="walle-lb-sync")
    parser.add_argument("--consul", default="http://127.0.0.1:8500", help="Consul HTTP address")
    parser.add_argument("--token-file", help="file holding a Consul token with KV read")
    parser.add_argument("--config", required=True, help="the services file this writes")
    parser.add_argument("--base", required=True, help="the role's base file (global, resolvers)")
    parser.add_argument("--haproxy", default="/usr/sbin/haproxy")
    parser.add_argument("--bind-address", default="*")
    parser.add_argument("--min-slots", type=int, default=16)
    parser.add_argument("--reserved-port", type=int, action="append", default=[])
    parser.add_argument("--reload", type=shlex.split, default=[],
                        help="command that reloads HAProxy (one argument, split like a shell)")
    parser.add_argument("--once", action="store_true", help="render once and exit")
    parser.add_argument("--timeout", type=float, default=330.0)
    args = parser.parse_args(argv)
    token = None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip() or None
    settings = Settings(bind_address=args.bind_address, min_slots=max(1, args.min_slots),
                        reserved_ports=tuple(args.reserved_port))
    consul = Consul(args.consul, token, args.timeout)
    if args.once:
        sync_once(consul, args, settings)
        return 0
    index, backoff = 0, 1.0
    while True:
        try:
            new_index = sync_once(consul, args, settings, index, "5m")
            index = 0 if new_index < index else new_index  # Consul's index went back: reset
            backoff = 1.0
        except (OSError, ValueError, urllib.error.URLError) as exc:
            print(f"walle-lb-sync: Consul unavailable ({type(exc).__name__}), HAProxy keeps "
                  f"its config; retrying in {backoff:.0f}s", file=sys.stderr)
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


if __name__ == "__main__":
    raise SystemExit(main())
