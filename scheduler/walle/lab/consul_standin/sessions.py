"""Sessions (api-docs/session.mdx, state/session.go): TTL, checks, behaviors, lock-delay."""

from __future__ import annotations

import re
import uuid

from . import kv
from .durations import format_duration, parse_duration
from .errors import rpc_error
from .fields import get

SESSION_TTL_MIN_S = 10.0
SESSION_TTL_MAX_S = 86400.0
SESSION_TTL_MULTIPLIER = 2  # Consul invalidates at 2xTTL after the last renewal
MAX_LOCK_DELAY_S = 60.0
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def require_session_uuid(session_id: str) -> None:
    """session.mdx: a malformed session UUID is an error (Consul's state store cannot look it
    up in its UUID index: the server's error reaches HTTP as a 500); an unknown one is not."""
    if len(session_id) != 36:
        raise rpc_error("failed session lookup: index error: UUID must be 36 characters")
    if not _UUID.match(session_id):
        raise rpc_error("failed session lookup: index error: invalid UUID format")
DEFAULT_LOCK_DELAY_S = 15.0
SERF_CHECK = "serfHealth"


def parse_lock_delay(value: object) -> float:
    """Strings are durations; numbers below 1000 are seconds, larger ones nanoseconds."""
    if isinstance(value, int | float):
        return float(value) if value < 1000 else float(value) / 1e9
    return parse_duration(value, "LockDelay")


class SessionMixin:
    sessions: dict[str, dict]
    session_deadline: dict[str, float]
    lock_delay: dict[str, float]
    nodes: dict[str, dict]
    checks: dict[tuple[str, str], dict]

    def session_create(self, body: dict, agent_node: str) -> str:
        session = self._new_session(body or {}, agent_node)
        with self.write():
            self._validate_session_checks(session)
            idx = self.touch("sessions")
            session.update(CreateIndex=idx, ModifyIndex=idx)
            self.sessions[session["ID"]] = session
            self._arm_session_timer(session)
        return session["ID"]

    def _new_session(self, body: dict, agent_node: str) -> dict:
        behavior = get(body, "Behavior") or "release"
        if behavior not in ("release", "delete"):
            raise rpc_error(f"Invalid Behavior setting '{behavior}'")
        ttl_text = get(body, "TTL") or ""
        if ttl_text:
            try:
                ttl = parse_duration(ttl_text, "TTL")
            except ValueError as exc:
                raise rpc_error(f"Session TTL '{ttl_text}' invalid: {exc}") from exc
            if ttl != 0 and not SESSION_TTL_MIN_S <= ttl <= SESSION_TTL_MAX_S:
                raise rpc_error(f"Invalid Session TTL '{ttl_text}', must be between "
                                f"[10s=24h0m0s]")
            ttl_text = format_duration(ttl) if ttl else ""
        node_checks = get(body, "NodeChecks")
        legacy = get(body, "Checks")
        if node_checks is None:
            node_checks = list(legacy) if legacy is not None else [SERF_CHECK]
        elif legacy:
            node_checks = list(dict.fromkeys([*node_checks, *legacy]))
        delay = get(body, "LockDelay")
        return {
            "ID": str(uuid.uuid4()), "Name": get(body, "Name") or "",
            "Node": get(body, "Node") or agent_node,
            "LockDelay": int(parse_lock_delay(delay) * 1e9)
            if delay is not None else int(DEFAULT_LOCK_DELAY_S * 1e9),
            "Behavior": behavior, "TTL": ttl_text, "NodeChecks": node_checks,
            "ServiceChecks": [{"ID": get(c, "ID"), "Namespace": get(c, "Namespace") or ""}
                              for c in get(body, "ServiceChecks") or []] or None,
        }

    def _validate_session_checks(self, session: dict) -> None:
        node = session["Node"]
        if node not in self.nodes:
            raise rpc_error("Missing node registration")
        bound = [*session["NodeChecks"], *(c["ID"] for c in session["ServiceChecks"] or [])]
        for check_id in bound:
            check = self.checks.get((node, check_id))
            if check is None:
                raise rpc_error(f"Missing check '{check_id}' registration")
            if check["Status"] == "critical":
                raise rpc_error(f"Check '{check_id}' is in critical state")

    def _arm_session_timer(self, session: dict) -> None:
        if session["TTL"]:
            ttl = parse_duration(session["TTL"])
            self.session_deadline[session["ID"]] = self.clock() + SESSION_TTL_MULTIPLIER * ttl

    def session_renew(self, session_id: str) -> dict | None:
        with self.cond:
            session = self.sessions.get(session_id)
            if session is not None:
                self._arm_session_timer(session)
            return session

    def session_destroy(self, session_id: str) -> bool:
        with self.write():
            self.invalidate_session(session_id)
        return True

    def invalidate_session(self, session_id: str) -> None:
        """Delete the session; release or delete its locks and start their lock-delay."""
        session = self.sessions.pop(session_id, None)
        self.session_deadline.pop(session_id, None)
        if session is None:
            return
        idx = self.touch("sessions")
        # the session keeps the LockDelay it was given; the state store caps what it applies
        delay_s = min(session["LockDelay"] / 1e9, MAX_LOCK_DELAY_S)
        held = [e["Key"] for e in self.kv.entries.values() if e["Session"] == session_id]
        for key in held:
            if session["Behavior"] == "delete":
                kv.kv_delete(self.kv, key, idx)
            else:
                kv.release_session(self.kv, key, idx)
            if delay_s > 0:
                self.lock_delay[key] = self.clock() + delay_s
        if held:
            self.touch("kvs", "tombstones")

    def invalidate_sessions_of_check(self, node: str, check_id: str) -> None:
        for sid, session in list(self.sessions.items()):
            if session["Node"] != node:
                continue
            service_checks = [c["ID"] for c in session["ServiceChecks"] or []]
            if check_id in session["NodeChecks"] or check_id in service_checks:
                self.invalidate_session(sid)

    def invalidate_sessions_of_node(self, node: str) -> None:
        for sid, session in list(self.sessions.items()):
            if session["Node"] == node:
                self.invalidate_session(sid)

    def expire_sessions(self, now: float) -> None:
        due = [sid for sid, t in self.session_deadline.items() if t <= now]
        if due:
            with self.write():
                for sid in due:
                    self.invalidate_session(sid)
        for key in [k for k, t in self.lock_delay.items() if t <= now]:
            del self.lock_delay[key]

    # --- reads ---------------------------------------------------------------------------
    def session_view(self, session_id: str | None = None, node: str | None = None):
        found = [s for s in self.sessions.values()
                 if (session_id is None or s["ID"] == session_id)
                 and (node is None or s["Node"] == node)]
        return self.table_index("sessions"), sorted(found, key=lambda s: s["CreateIndex"])
