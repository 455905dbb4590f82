"""`walle backup FILE` / `walle restore FILE` over Consul's snapshot API (a private stand-in:
a restore replaces the whole state)."""

from __future__ import annotations

import gzip
import io
import json
import socket
import stat
import tarfile

import pytest

import consul
from walle.cli.main import main
from walle.lab.consul_standin import start_in_thread

pytestmark = pytest.mark.consul

WEB = "examples/web.yml"


@pytest.fixture
def cluster(tmp_path):
    standin = start_in_thread(data_dir=tmp_path / "consul", node_name="walle-test-server",
                              dns=None)
    host, port = standin.http_addr
    try:
        yield f"http://{host}:{port}", consul.Consul(host=host, port=port)
    finally:
        standin.stop()


def walle(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def state_of(c: consul.Consul) -> tuple:
    """Everything a restore must bring back: KV (values and locks), sessions, catalog."""
    _, entries = c.kv.get("", recurse=True)
    kv = sorted((e["Key"], e["Value"], e.get("Session")) for e in entries or [])
    sessions = sorted(s["ID"] for s in c.session.list()[1])
    nodes = sorted((n["Node"], n["Address"]) for n in c.catalog.nodes()[1])
    return kv, sessions, nodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backup_mutate_restore_brings_the_state_back(cluster, tmp_path, capsys):
    addr, c = cluster
    assert walle(capsys, "run", WEB, "--consul-addr", addr)[0] == 0
    sid = c.session.create(name="holder", lock_delay=0)
    assert c.kv.put("walle/test/lock", "x", acquire=sid)
    c.catalog.register("backup-node", "10.8.0.1")
    before = state_of(c)
    backup = tmp_path / "snap.tgz"

    code, out, _ = walle(capsys, "backup", str(backup), "--consul-addr", addr, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["bytes"] == backup.stat().st_size and report["index"] > 0
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    assert walle(capsys, "scale", "web", "1", "--consul-addr", addr)[0] == 0
    c.kv.delete("walle/test/lock")
    c.session.destroy(sid)
    c.catalog.deregister("backup-node")
    c.kv.put("walle/junk", "new")
    assert state_of(c) != before

    code, out, _ = walle(capsys, "restore", str(backup), "--yes", "--consul-addr", addr)
    assert code == 0 and "restored" in out
    assert state_of(c) == before
    code, out, _ = walle(capsys, "status", "--consul-addr", addr, "--json")
    assert [(r["job"], r["count"]) for r in json.loads(out)["jobs"]] == [("web", 3)]


def test_restore_asks_first_and_a_no_changes_nothing(cluster, tmp_path, capsys, monkeypatch):
    addr, c = cluster
    c.kv.put("k", "old")
    backup = tmp_path / "snap.tgz"
    assert walle(capsys, "backup", str(backup), "--consul-addr", addr)[0] == 0
    c.kv.put("k", "new")
    monkeypatch.setattr("sys.stdin", io.StringIO("no\n"))
    code, _, err = walle(capsys, "restore", str(backup), "--consul-addr", addr)
    assert code == 1 and "ALL Consul state" in err and "nothing was changed" in err
    assert c.kv.get("k")[1]["Value"] == b"new"
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    assert walle(capsys, "restore", str(backup), "--consul-addr", addr)[0] == 0
    assert c.kv.get("k")[1]["Value"] == b"old"


def _retar(archive: bytes, edit) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as src, \
            tarfile.open(fileobj=out, mode="w") as dst:
        for info in src:
            data = edit(info.name, src.extractfile(info).read())
            if data is None:
                continue
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue())


@pytest.mark.parametrize("bad", ["missing", "empty", "text", "truncated", "edited",
                                 "no-sums", "directory"])
def test_bad_file_is_refused_with_exit_2_and_nothing_changed(cluster, tmp_path, capsys, bad):
    addr, c = cluster
    c.kv.put("k", "v1")
    good = tmp_path / "good.tgz"
    assert walle(capsys, "backup", str(good), "--consul-addr", addr)[0] == 0
    c.kv.put("k", "v2")
    archive = good.read_bytes()
    path = tmp_path / "bad.tgz"
    if bad == "directory":
        path.mkdir()
    elif bad != "missing":
        path.write_bytes({
            "empty": b"",
            "text": b"kv:\n  k: v1\n",
            "truncated": archive[: len(archive) // 2],
            "edited": _retar(archive, lambda n, d: d.replace(b'"v1"', b'"v9"')
                             .replace(b"djE=", b"djk=") if n.startswith("state") else d),
            "no-sums": _retar(archive, lambda n, d: None if n == "SHA256SUMS" else d),
        }[bad])
    code, _, err = walle(capsys, "restore", str(path), "--yes", "--consul-addr", addr)
    assert code == 2, err
    assert str(path) in err
    assert c.kv.get("k")[1]["Value"] == b"v2"


def test_backup_into_a_missing_directory_is_exit_2(cluster, tmp_path, capsys):
    addr, _ = cluster
    code, _, err = walle(capsys, "backup", str(tmp_path / "nope" / "s.tgz"), "--consul-addr", addr)
    assert code == 2 and "does not exist" in err


def test_unreachable_consul_is_exit_3(tmp_path, capsys, cluster):
    addr, _ = cluster
    good = tmp_path / "good.tgz"
    assert walle(capsys, "backup", str(good), "--consul-addr", addr)[0] == 0
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = walle(capsys, "backup", str(tmp_path / "b.tgz"), "--consul-addr", dead)
    assert code == 3 and "unreachable" in err
    assert not (tmp_path / "b.tgz").exists()
    code, _, err = walle(capsys, "restore", str(good), "--yes", "--consul-addr", dead)
    assert code == 3 and "unreachable" in err
