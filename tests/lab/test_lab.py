"""The lab itself: nodes boot real systemd, reach each other, and die hard when killed."""

import json
import subprocess


def ansible(lab, *args, check=True):
    return subprocess.run(
        [".venv/bin/ansible", "-i", str(lab.inventory_path), *args],
        capture_output=True, text=True, check=False, timeout=120,
    )


def test_every_node_runs_systemd_and_answers_ssh(lab):
    rows = lab.status()
    assert [r["name"] for r in rows] == ["node1", "node2", "node3"]
    assert all(r["running"] and r["ssh"] for r in rows)
    out = ansible(lab, "walle_nodes", "-m", "command", "-a",
                  "systemctl is-system-running --wait")
    assert out.stdout.count("running") == 3, out.stdout + out.stderr


def test_nodes_have_distinct_addresses_on_the_lab_subnet(lab):
    addresses = [n.address for n in lab.nodes]
    assert len(set(addresses)) == 3
    prefix = lab.host_address.rsplit(".", 1)[0]
    assert all(a.startswith(prefix + ".") for a in addresses)
    probe = f"import socket; socket.create_connection(('{addresses[1]}', 22), 2)"
    out = ansible(lab, "node1", "-m", "command", "-a", f'python3 -c "{probe}"')
    assert out.returncode == 0


def test_inventory_json_matches_nodes(lab):
    inv = json.loads((lab.inventory_path.parent / "inventory.json").read_text())
    hosts = inv["all"]["children"]["walle_nodes"]["hosts"]
    assert {h: v["ansible_host"] for h, v in hosts.items()} == {
        n.name: n.address for n in lab.nodes}


def test_killed_node_is_gone_and_can_restart(lab):
    lab.kill_node("node3")
    row = next(r for r in lab.status() if r["name"] == "node3")
    assert not row["running"]
    lab.restart_node("node3")
    row = next(r for r in lab.status() if r["name"] == "node3")
    log = (lab.dir / "nodes/node3/console.log").read_text()[-2000:]
    assert row["running"] and row["ssh"], log


def test_a_node_restarts_while_another_stays_down(lab):
    """restart_node waits for the node it boots, not for nodes killed on purpose (it used to
    report "node2 exited while booting" when node3 came back)."""
    lab.kill_node("node2")
    lab.kill_node("node3")
    try:
        lab.restart_node("node3")
        rows = {r["name"]: r for r in lab.status()}
        assert rows["node3"]["running"] and rows["node3"]["ssh"]
        assert not rows["node2"]["running"]
    finally:
        lab.restart_node("node2")
        lab.restart_node("node3")
    assert all(r["running"] and r["ssh"] for r in lab.status())
