"""Membership from a real Serf cluster, turned into catalog nodes and serfHealth the way a
Consul server's leader reconciles LAN members (agent/consul/leader.go):
alive -> node registered, serfHealth passing; failed -> serfHealth critical (bound sessions
are invalidated by the store); left or reaped -> node deregistered. Detection time is Serf's:
we only poll `serf members`, at a short bounded interval."""

from __future__ import annotations

import json
import logging
import subprocess
import threading

from .store import Store

log = logging.getLogger("walle.consul_standin.serf")
POLL_INTERVAL_S = 0.25
CALL_TIMEOUT_S = 3.0


def parse_members(text: str) -> list[dict]:
    """`serf members -format=json` -> [{name, ip, port, tags, status}]."""
    out = []
    for m in json.loads(text).get("members", []):
        host, _, port = m["addr"].rpartition(":")
        out.append({"name": m["name"], "ip": host.strip("[]"), "port": int(port or 0),
                    "tags": m.get("tags") or {}, "status": m["status"]})
    return out


class AgentStash:
    """What each node's Consul agent keeps in its data dir: the services and checks registered
    through it. A real agent that leaves (a restart is a graceful leave) is deregistered by the
    servers and, when it joins again, re-registers that local state by anti-entropy; the
    stand-in plays every agent, so it keeps the state here meanwhile (checks come back
    critical until they run again, as after an agent restart)."""

    def __init__(self) -> None:
        self._nodes: dict[str, dict] = {}

    def keep(self, store: Store, node: str) -> None:
        self._nodes[node] = {
            "services": [dict(s) for (n, _), s in store.services.items() if n == node],
            "checks": [dict(c) for (n, cid), c in store.checks.items()
                       if n == node and cid != "serfHealth" and c.get("ServiceID")],
            "defs": {cid: dict(d) for (n, cid), d in store.check_defs.items() if n == node},
        }

    def restore(self, store: Store, node: str) -> None:
        state = self._nodes.pop(node, None)
        if state is None:
            return
        for service in state["services"]:
            store.put_service(node, service)
        for check in state["checks"]:
            store.put_check({**check, "Status": "critical", "Output": ""})
            if check["CheckID"] in state["defs"]:
                store.check_defs[(node, check["CheckID"])] = state["defs"][check["CheckID"]]


def apply_members(store: Store, members: list[dict], protected: set[str],
                  stash: AgentStash | None = None) -> None:
    """Reconcile the catalog with Serf like a Consul leader: alive -> registered and passing,
    failed -> serfHealth critical, left -> deregistered, and any node that carries serfHealth
    but is no longer a member (reaped, or gone while we were down) -> deregistered.
    `protected` nodes are the agents the stand-in plays itself; Serf never removes them.
    With a `stash`, a deregistered node's agent state comes back when it is alive again."""
    stash = stash or AgentStash()
    with store.write():
        for m in members:
            name, status = m["name"], m["status"]
            if status == "alive":
                store.ensure_node(name, m["ip"], m["tags"])
                store.set_serf_health(name, alive=True)
                stash.restore(store, name)
            elif status == "failed" and name in store.nodes:
                store.set_serf_health(name, alive=False)
            elif status == "left" and name not in protected and name in store.nodes:
                stash.keep(store, name)
                store.delete_node(name)
        known = {m["name"] for m in members}
        reaped = {node for (node, check) in store.checks if check == "serfHealth"}
        for name in sorted(reaped - known - protected):
            stash.keep(store, name)
            store.delete_node(name)


class SerfFollower:
    def __init__(self, store: Store, rpc_addr: str, serf_bin: str = "serf",
                 interval_s: float = POLL_INTERVAL_S, protected: set[str] | None = None):
        self.store = store
        self.rpc_addr = rpc_addr
        self.serf_bin = serf_bin
        self.interval_s = interval_s
        self.protected = set(protected or ())
        self.last: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consul-standin-serf",
                                        daemon=True)
        self._failures = 0
        self.stash = AgentStash()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=CALL_TIMEOUT_S + 1)

    def poll_once(self) -> bool:
        cmd = [self.serf_bin, "members", "-format=json", f"-rpc-addr={self.rpc_addr}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=CALL_TIMEOUT_S,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return self._failed(f"{exc}")
        if done.returncode != 0:
            return self._failed(done.stderr.strip() or f"exit {done.returncode}")
        self.last = parse_members(done.stdout)
        apply_members(self.store, self.last, self.protected, self.stash)
        self._failures = 0
        return True

    def _failed(self, why: str) -> bool:
        # Without its local Serf agent a Consul server learns nothing new: keep the last state.
        self._failures += 1
        if self._failures in (1, 20) or self._failures % 240 == 0:
            log.warning("serf members via %s failed (%d in a row): %s", self.rpc_addr,
                        self._failures, why)
        return False

    def members(self) -> list[dict]:
        from .http_api import member_json

        return [member_json(m["name"], m["ip"], m["port"], m["tags"], m["status"])
                for m in self.last]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)
