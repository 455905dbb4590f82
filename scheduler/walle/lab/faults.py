"""Fault injection for the lab: the failures a chaos run inflicts, each bounded and undone by name.

Everything here acts only on what one lab owns: a node's nspawn process and its host-side veth
(`vb-w<index>-<node>`, a port of the lab's bridge on 10.77.<index>.0/24) and the host daemons
the lab recorded by key and PID (`Lab.start_process`: the Consul stand-in, schedulers). Nothing
is found by a broad name match, and every fault has its undo: `heal`, `restart_daemon`,
`Lab.restart_node`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil

from walle.lab.nodes import Lab, LabError, _alive, _children, _wait_gone

NODE_AGENT_UNIT = "walle-serf.service"  # the node's membership agent in the lab (roles/consul)
EXEC_TIMEOUT = 20.0


def node_init_pid(lab: Lab, node: str) -> int | None:
    """PID (on the host) of the node's systemd, or None when the node is not running."""
    entry = _lab_node(lab, node)
    if not entry.pid or not _alive(entry.pid):
        return None
    inits = _children(entry.pid)
    return inits[0] if inits else None


def node_exec(lab: Lab, node: str, argv: list[str],
              timeout: float = EXEC_TIMEOUT) -> subprocess.CompletedProcess:
    """Run argv inside a node's namespaces (nsenter from the host). Unlike SSH this works while
    the node is partitioned, so an observer sees what a cut-off node really runs."""
    if _lab_node(lab, node).is_vm:
        raise LabError(f"{node} is a VM node: its namespaces are in the guest's kernel, not "
                       "here; reach it over SSH (walle.adapters.runner.run_command)")
    pid = node_init_pid(lab, node)
    if pid is None:
        raise LabError(f"{node} is not running")
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--", *argv],
                          capture_output=True, text=True, timeout=timeout, check=False)


def bridge_port(lab: Lab, node: str) -> str:
    """The node's host-side port on the lab bridge: the veth nspawn --network-bridge names
    vb-<machine> (the lab's machine names are w<index>-<node>, see Lab._boot), or a VM node's
    tap device."""
    entry = _lab_node(lab, node)
    if entry.is_vm:
        return entry.tap
    return f"vb-w{lab._require_state().index}-{node}"


def partition(lab: Lab, node: str) -> None:
    """Cut a node off from the host and every other node: detach its veth from the lab bridge.
    The link keeps its carrier, so the node's own network config stays as it is and `heal`
    only has to attach the port again."""
    _ip("link", "set", bridge_port(lab, node), "nomaster")


def heal(lab: Lab, node: str) -> None:
    """Undo `partition`: attach the node's veth to the lab bridge again (idempotent)."""
    port = bridge_port(lab, node)
    if os.path.exists(f"/sys/class/net/{port}"):
        _ip("link", "set", port, "master", lab.bridge)


def partitioned(lab: Lab) -> list[str]:
    """Nodes whose veth exists but is not a port of the lab bridge."""
    out = []
    for entry in lab.nodes:
        port = bridge_port(lab, entry.name)
        if os.path.exists(f"/sys/class/net/{port}") and \
                not os.path.exists(f"/sys/class/net/{port}/master"):
            out.append(entry.name)
    return out


def heal_all(lab: Lab) -> list[str]:
    """Heal every partitioned node of the lab (cleanup after a chaos run); returns them."""
    cut = partitioned(lab)
    for node in cut:
        heal(lab, node)
    return cut


def kill_daemon(lab: Lab, key: str) -> int | None:
    """SIGKILL a host daemon the lab started (`Lab.start_process` key, e.g. "consul-standin",
    "scheduler-1") by its recorded PID, and wait until it is gone. Returns the PID, or None if
    it was not running."""
    pid = lab._require_state().processes.get(key)
    if not pid or not _alive(pid):
        return None
    # the whole tree, as a crash of its host would: e.g. the ansible-playbook a scheduler runs
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    if not _wait_gone(pid, 10.0):
        raise LabError(f"{key} (pid {pid}) survived SIGKILL for 10s")
    return pid


def daemon_alive(lab: Lab, key: str) -> bool:
    pid = lab._require_state().processes.get(key)
    return bool(pid) and _alive(pid)


def restart_standin(lab: Lab) -> str:
    """Start the Consul stand-in again on its data dir after a kill (Serf is kept if alive)."""
    return lab.start_consul()


def restart_node_agent(lab: Lab, node: str) -> None:
    """Restart a node's Consul agent (in the lab: its Serf agent) in place."""
    proc = node_exec(lab, node, ["systemctl", "restart", NODE_AGENT_UNIT])
    if proc.returncode != 0:
        raise LabError(f"{node}: systemctl restart {NODE_AGENT_UNIT} failed: "
                       f"{proc.stderr.strip()}")


def _lab_node(lab: Lab, node: str):
    entry = next((n for n in lab.nodes if n.name == node), None)
    if entry is None:
        raise LabError(f"no node {node!r} in lab {lab.name!r}")
    return entry


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=False)
    if proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
