"""/v1/snapshot (api-docs/snapshot.mdx): GET answers a gzipped tar archive of the whole state
with X-Consul-Index = the index it was taken at; PUT restores one atomically (200, empty body),
replacing KV, sessions and the catalog. The restore tests run on a private stand-in (a restore
replaces everything, which the shared session stand-in must not see).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import threading
import time

import pytest
import requests

import consul
from walle.lab.consul_standin import start_in_thread

pytestmark = pytest.mark.consul


@pytest.fixture
def private(tmp_path):
    standin = start_in_thread(data_dir=tmp_path / "data", dns=None, node_name="snap-server")
    host, port = standin.http_addr
    try:
        yield standin, f"http://{host}:{port}", consul.Consul(host=host, port=port)
    finally:
        standin.stop()


def test_get_snapshot_is_a_gzipped_tar_at_the_current_index(consul_addr, consul_client, unique):
    key = unique("snap")
    consul_client.kv.put(key, "v")
    written = consul_client.kv.get(key)[1]["ModifyIndex"]
    resp = requests.get(f"http://{consul_addr}/v1/snapshot", timeout=30)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/x-gzip"
    assert int(resp.headers["X-Consul-Index"]) >= written
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(resp.content))) as tar:
        names = tar.getnames()
    assert "meta.json" in names and "SHA256SUMS" in names
    consul_client.kv.delete(key)


def test_snapshot_rejects_other_methods_and_datacenters(consul_addr):
    assert requests.delete(f"http://{consul_addr}/v1/snapshot", timeout=10).status_code == 405
    resp = requests.get(f"http://{consul_addr}/v1/snapshot?dc=nowhere", timeout=10)
    assert resp.status_code == 500


def test_agent_services_does_not_list_the_servers_consul_service(consul_client):
    assert "consul" not in consul_client.agent.services()
    assert "consul" in consul_client.catalog.services()[1]


def test_restore_replaces_kv_sessions_and_catalog(private):
    standin, url, c = private
    c.kv.put("app/a", "1")
    c.kv.put("app/b", "1")
    sid = c.session.create(name="keeper", lock_delay=0)
    assert c.kv.put("app/lock", "held", acquire=sid)
    c.catalog.register("snap-node1", "10.9.0.1", service={"service": "web", "port": 80})
    archive = requests.get(f"{url}/v1/snapshot", timeout=30).content

    c.kv.put("app/a", "2")
    c.kv.delete("app/b")
    c.kv.put("app/c", "new")
    c.session.destroy(sid)
    c.catalog.deregister("snap-node1")
    c.catalog.register("snap-node2", "10.9.0.2")
    before_restore = int(requests.get(f"{url}/v1/kv/app/a", timeout=10)
                         .headers["X-Consul-Index"])

    resp = requests.put(f"{url}/v1/snapshot", data=archive, timeout=30)
    assert (resp.status_code, resp.content) == (200, b"")

    assert c.kv.get("app/a")[1]["Value"] == b"1"
    assert c.kv.get("app/b")[1]["Value"] == b"1"
    assert c.kv.get("app/c")[1] is None
    assert c.kv.get("app/lock")[1]["Session"] == sid
    assert c.session.info(sid)[1]["Name"] == "keeper"
    nodes = {n["Node"] for n in c.catalog.nodes()[1]}
    assert "snap-node1" in nodes and "snap-node2" not in nodes
    assert "snap-server" in nodes  # the server's own node stays
    assert [s["ServiceID"] for s in c.catalog.service("web")[1]] == ["web"]
    # writes after a restore move the index forward from where it was
    c.kv.put("app/after", "x")
    assert c.kv.get("app/after")[1]["ModifyIndex"] > before_restore


def test_restore_wakes_blocking_queries(private):
    standin, url, c = private
    c.kv.put("wake/k", "1")
    archive = requests.get(f"{url}/v1/snapshot", timeout=30).content
    c.kv.put("wake/k", "2")
    index, _ = c.kv.get("wake/k")
    answered = threading.Event()

    def blocker():
        c.kv.get("wake/k", index=index, wait="30s")
        answered.set()

    t = threading.Thread(target=blocker)
    t.start()
    time.sleep(0.3)
    assert requests.put(f"{url}/v1/snapshot", data=archive, timeout=30).status_code == 200
    assert answered.wait(5), "a blocking query kept waiting on the replaced state"
    t.join()


def test_restore_is_durable(tmp_path):
    data = tmp_path / "data"
    first = start_in_thread(data_dir=data, dns=None, node_name="snap-server")
    host, port = first.http_addr
    url, c = f"http://{host}:{port}", consul.Consul(host=host, port=port)
    c.kv.put("d/k", "old")
    archive = requests.get(f"{url}/v1/snapshot", timeout=30).content
    c.kv.put("d/k", "new")
    assert requests.put(f"{url}/v1/snapshot", data=archive, timeout=30).status_code == 200
    first.persistence.wal.close()  # a crash right after the answer: no clean-stop snapshot
    first.persistence = None
    first.stop()
    second = start_in_thread(data_dir=data, dns=None, node_name="snap-server")
    try:
        host, port = second.http_addr
        assert consul.Consul(host=host, port=port).kv.get("d/k")[1]["Value"] == b"old"
    finally:
        second.stop()


def _tampered(archive: bytes) -> bytes:
    raw = io.BytesIO(gzip.decompress(archive))
    out = io.BytesIO()
    with tarfile.open(fileobj=raw) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for info in src:
            data = src.extractfile(info).read()
            if info.name == "state.json":
                data = data.replace(b'"snap/k"', b'"snap/X"')
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue())


@pytest.mark.parametrize("bad", ["garbage", "truncated", "tampered", "empty-tar"])
def test_bad_archive_is_refused_and_nothing_changes(private, bad):
    standin, url, c = private
    c.kv.put("snap/k", "1")
    archive = requests.get(f"{url}/v1/snapshot", timeout=30).content
    c.kv.put("snap/k", "2")
    body = {"garbage": b"not a snapshot at all",
            "truncated": archive[: len(archive) // 2],
            "tampered": _tampered(archive),
            "empty-tar": gzip.compress(b"\0" * 1024)}[bad]
    resp = requests.put(f"{url}/v1/snapshot", data=body, timeout=30)
    assert resp.status_code == 500 and resp.text
    assert c.kv.get("snap/k")[1]["Value"] == b"2"
