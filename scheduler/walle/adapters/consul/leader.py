"""The scheduler leader lock: a Consul session plus `?acquire=` on one key.

Life cycle: create a session (TTL, behavior release, bound to the node's serfHealth) ->
PUT key?acquire=<session> -> while leader, renew every TTL/2 in a background thread and check
the key still names our session -> step_down() releases the key and destroys the session.
If the session is lost (renew answers 404, the key names another session, or Consul stays
unreachable past the TTL), is_leader turns False and `on_lost` is called once.
Followers block on the key until its Session is empty, then try again; after an invalidation
Consul refuses acquires for LockDelay, which lets the old leader notice before a new one acts.
A follower's session is renewed while it waits too (each blocking read is capped at TTL/2):
Consul invalidates a session 2 x TTL after its last renewal, and a follower that won with a
session about to die would lose the lock before the renewer's first turn. For the same reason
a won lock is renewed once before `is_leader` is set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from consul.exceptions import ConsulException

from walle.adapters.consul.api import ConsulApi, go_duration
from walle.adapters.consul.errors import ConsulError, ConsulNotFound
from walle.adapters.consul.state import LEADER_KEY

log = logging.getLogger(__name__)

MIN_TTL, MAX_TTL = 10, 86400  # Consul's session TTL bounds (seconds)


class LeaderLock:
    def __init__(
        self,
        api: ConsulApi,
        key: str = LEADER_KEY,
        name: str = "walle-scheduler",
        ttl: int = 10,
        lock_delay: float = 15.0,
        *,
        node: str | None = None,
        node_checks: tuple[str, ...] = ("serfHealth",),
        value: bytes = b"",
        on_lost: Callable[[], None] | None = None,
    ):
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"LeaderLock ttl must be {MIN_TTL}..{MAX_TTL} seconds, got {ttl}")
        if lock_delay < 0:
            raise ValueError(f"LeaderLock lock_delay must be >= 0 seconds, got {lock_delay}")
        self.api = api
        self.key = key
        self.name = name
        self.ttl = ttl
        self.lock_delay = lock_delay
        self.node = node
        self.node_checks = node_checks
        self.value = value or name.encode()
        self.on_lost = on_lost
        self.session_id: str | None = None
        self._leader = threading.Event()
        self._stop_renew = threading.Event()
        self._renewer: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._renewed_at = 0.0  # monotonic time of the session's creation or last renewal

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    # --- session -------------------------------------------------------------------------
    def _create_session(self) -> str:
        body: dict[str, Any] = {
            "Name": self.name,
            "TTL": go_duration(self.ttl),
            "Behavior": "release",
            "LockDelay": go_duration(self.lock_delay),
            "NodeChecks": list(self.node_checks),
        }
        if self.node:
            body["Node"] = self.node
        status, answer = self.api.raw("put", "/v1/session/create", data=json.dumps(body),
                                      what="create leader session")
        if status != 200 or not isinstance(answer, dict) or "ID" not in answer:
            raise ConsulError(f"session create at {self.api.address} answered {status}: "
                              f"{answer}")
        return answer["ID"]

    def _ensure_session(self) -> str:
        if self.session_id is None:
            self.session_id = self._create_session()
            self._renewed_at = time.monotonic()
        return self.session_id

    def _renew_session(self, sid: str) -> float:
        """Renew `sid`; ConsulNotFound when it is gone. Returns the TTL in force."""
        c = self.api.client
        answer = self.api.call("renew leader session", lambda: c.session.renew(sid))
        self._renewed_at = time.monotonic()
        return _parse_ttl((answer or {}).get("TTL"), self.ttl)

    def _keep_standby_session(self) -> None:
        """While we wait, renew our session every TTL/2 so it is alive when we win; replace
        one that was invalidated (expired, or its node check failed). Creating may raise
        ConsulError (e.g. our node's serfHealth is critical): the caller retries later."""
        with self._mutex:
            if self.is_leader:
                return
            due = time.monotonic() - self._renewed_at >= self.ttl / 2
            if self.session_id is not None and due:
                try:
                    self._renew_session(self.session_id)
                except ConsulNotFound:
                    log.info("standby session for %s was invalidated: creating a new one",
                             self.key)
                    self.session_id = None
            self._ensure_session()

    # --- acquire / wait ------------------------------------------------------------------
    def acquire(self) -> bool:
        """One attempt. True when we hold the key (and the renewer runs)."""
        with self._mutex:
            if self.is_leader:
                return True
            sid = self._ensure_session()
            got = self.api.call(f"acquire {self.key}", lambda: self._try_acquire(sid))
            if got is None:  # our session died (e.g. its node check failed): make a new one
                self.session_id = None
            if got and self._confirm_won(sid):
                self._leader.set()
                self._start_renewer()
                return True
            return False

    def _confirm_won(self, sid: str) -> bool:
        """Renew right after winning: the session may have been close to its 2 x TTL end, and
        the renewer's first turn is TTL/2 away. False (and the session dropped) when it is
        already gone or the key names another session; a Consul we cannot reach is not
        leadership either: release the key (guarded by our session) and re-raise."""
        try:
            self.renew_once()
            return True
        except (ConsulNotFound, LostLock) as err:
            log.warning("won %s but lost it at once: %s", self.key, err)
            self.session_id = None
            return False
        except ConsulError:
            c = self.api.client
            with contextlib.suppress(ConsulError):
                self.api.call(f"release {self.key}",
                              lambda: c.kv.put(self.key, self.value, release=sid))
            raise

    def _try_acquire(self, sid: str) -> bool | None:
        try:
            return bool(self.api.client.kv.put(self.key, self.value, acquire=sid))
        except ConsulException as err:  # Consul answers 500 "invalid session"
            if "invalid session" in str(err).lower():
                return None
            raise

    def wait_for_leadership(self, timeout: float) -> bool:
        """Try, then block on the key until its Session is empty and try again; bounded by
        `timeout` seconds. A free key that still refuses us is inside LockDelay: retry with
        a short capped back-off."""
        deadline = time.monotonic() + timeout
        index = 0
        backoff = 0.1
        while True:
            if self.acquire():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._keep_standby_session()
            idx, entry = self._read_key(index, min(remaining, self.ttl / 2))
            holder = entry.get("Session") if entry else None
            if holder:
                index = max(1, idx if idx >= index else 0)  # block until the holder changes
                backoff = 0.1
                continue
            index = 0  # free but refused: inside the lock delay; back off briefly
            time.sleep(min(backoff, max(deadline - time.monotonic(), 0)))
            backoff = min(backoff * 2, 1.0)

    def _read_key(self, index: int, remaining: float) -> tuple[int, dict | None]:
        kv = self.api.client.kv
        wait = go_duration(max(min(remaining, 60.0), 0.001))
        idx, entry = self.api.call(f"watch {self.key}",
                                   lambda: kv.get(self.key, index=index or None, wait=wait))
        return int(idx), entry

    # --- renew / lose / step down ---------------------------------------------------------
    def _start_renewer(self) -> None:
        self._stop_renew.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"renew-{self.key}",
                                         daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        interval = self.ttl / 2
        last_ok = time.monotonic()
        while not self._stop_renew.wait(interval):
            try:
                interval = self.renew_once() / 2
                last_ok = time.monotonic()
            except ConsulNotFound:
                self._lost("session expired or was destroyed")
                return
            except LostLock as err:
                self._lost(str(err))
                return
            except ConsulError as err:  # unreachable: our session may outlive it by ~TTL
                if time.monotonic() - last_ok > self.ttl:
                    self._lost(f"cannot renew for over the TTL: {err}")
                    return
                interval = 1.0

    def renew_once(self) -> float:
        """Renew the session and check the key still names it. Returns the TTL in force."""
        sid = self.session_id
        if sid is None:
            raise ConsulNotFound("no session")
        ttl = self._renew_session(sid)
        c = self.api.client
        _, entry = self.api.call(f"read {self.key}", lambda: c.kv.get(self.key))
        if not entry or entry.get("Session") != sid:
            raise LostLock(f"{self.key} is no longer held by session {sid}")
        return ttl

    def mark_lost(self, why: str) -> None:
        """The caller learned first (a guarded write failed its check-session): stop acting as
        leader now instead of at the next renewal. The renewer finds no session and ends."""
        self._lost(why)

    def _lost(self, why: str) -> None:
        log.warning("leadership of %s lost: %s", self.key, why)
        was_leader = self.is_leader
        self._leader.clear()
        self.session_id = None
        if was_leader and self.on_lost:
            self.on_lost()

    def step_down(self) -> None:
        """Release the key and destroy the session (voluntary: on_lost is not called)."""
        self._stop_renew.set()
        if self._renewer and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=self.api.config.timeout + 1)
        sid, self.session_id = self.session_id, None
        self._leader.clear()
        if sid is None:
            return
        c = self.api.client
        with contextlib.suppress(ConsulError):
            self.api.call(f"release {self.key}",
                          lambda: c.kv.put(self.key, self.value, release=sid))
        with contextlib.suppress(ConsulError):
            self.api.call("destroy leader session", lambda: c.session.destroy(sid))

    def __enter__(self) -> LeaderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.step_down()


class LostLock(ConsulError):
    """The lock key no longer names our session."""


def _parse_ttl(raw: str | None, default: float) -> float:
    if not raw:
        return default
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    value = sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ns|us|µs|ms|s|m|h)", raw))
    return value if value > 0 else default
