"""`walle package` against a Consul HTTP API (the stand-in): install writes the dependency's
jobs, then the package's, then the records; upgrade, uninstall (refused while a dependent
remains, --cascade) and bad input that writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from walle.adapters.consul import StateStore
from walle.cli.main import main

pytestmark = pytest.mark.consul

CATALOG = Path(__file__).resolve().parents[2] / "catalog"






def walle(capsys, addr, *argv) -> tuple[int, str, str]:
    code = main(["package", *argv, "--consul-addr", addr])
    out, err = capsys.readouterr()
    return code, out, err


def kv_keys(store: StateStore) -> list[str]:
    _, keys = store.api.call("keys", lambda: store._kv.get("walle/", keys=True))
    return sorted(keys or [])


def test_install_writes_the_dependency_first_then_the_app_and_records_both(addr, store, capsys):
    code, out, err = walle(capsys, addr, "install", "kv-app", "--version", "1.0.0",
                           "--set", "greeting=bonjour", "--set", "count=3", "--json")
    assert code == 0, err
    done = json.loads(out)["packages"]
    assert [(p["name"], p["version"]) for p in done] == [("kvstore", "1.1.0"),
                                                         ("kv-app", "1.0.0")]
    _, jobs = store.jobs()
    assert jobs["kvstore"].modify_index < jobs["kv-app"].modify_index  # written in order
    env = jobs["kv-app"].spec["runtime"]["env"]
    assert env["WALLE_DEP_KVSTORE_SERVICE"] == "kvstore.service.consul"
    assert env["APP_GREETING"] == "bonjour" and jobs["kv-app"].spec["count"] == 3
    records = {name: body for name, (body, _) in store.packages().items()}
    assert records["kv-app"] == {
        "version": "1.0.0", "jobs": ["kv-app"], "dependencies": {"kvstore": ">=1.0,<2"},
        "values": {"greeting": "bonjour", "port": 8081, "count": 3, "cpu": 0.5,
                   "consul_http": "http://127.0.0.1:8500"},
        "service": {"service": "kv-app", "port": 8081}}
    assert records["kvstore"]["jobs"] == ["kvstore"]
    code, out, _ = walle(capsys, addr, "installed", "--json")
    assert [r["name"] for r in json.loads(out)] == ["kv-app", "kvstore"]


def test_upgrade_writes_the_new_version_and_keeps_the_values(addr, store, capsys):
    walle(capsys, addr, "install", "kv-app", "--version", "1.0.0", "--set", "greeting=hey")
    before = store.job("kv-app")
    code, out, err = walle(capsys, addr, "upgrade", "kv-app", "--set", "count=1")
    assert code == 0, err
    assert "kv-app 1.1.0: upgraded from 1.0.0" in out
    after = store.job("kv-app")
    assert after.spec["runtime"]["env"]["APP_VERSION"] == "1.1.0"
    assert after.spec["runtime"]["env"]["APP_GREETING"] == "hey" and after.spec["count"] == 1
    assert after.previous["version"] == before.version  # kept for the automatic rollback
    body, _ = store.packages()["kv-app"]
    assert body["version"] == "1.1.0" and body["values"]["greeting"] == "hey"


def test_uninstall_refuses_while_a_dependent_remains_and_cascade_removes_all(addr, store,
                                                                            capsys):
    walle(capsys, addr, "install", "kv-app")
    code, _, err = walle(capsys, addr, "uninstall", "kvstore")
    assert code == 2 and "kvstore is needed by kv-app" in err and "--cascade" in err
    assert set(store.jobs()[1]) == {"kvstore", "kv-app"}
    code, out, _ = walle(capsys, addr, "uninstall", "kvstore", "--cascade", "--json")
    assert code == 0
    assert [p["name"] for p in json.loads(out)["uninstalled"]] == ["kv-app", "kvstore"]
    assert kv_keys(store) == []


def test_uninstalling_the_dependent_leaves_the_dependency(addr, store, capsys):
    walle(capsys, addr, "install", "kv-app")
    code, _, _ = walle(capsys, addr, "uninstall", "kv-app")
    assert code == 0 and set(store.jobs()[1]) == {"kvstore"}
    assert list(store.packages()) == ["kvstore"]


@pytest.mark.parametrize("argv, words", [
    (["install", "nosuch"], "unknown package 'nosuch'"),
    (["install", "kv-app", "--version", "9.0"], "has no version 9.0"),
    (["install", "kv-app", "--set", "count=many"], "--set count: expected an integer"),
    (["install", "kv-app", "--set", "count=99"], "above the maximum 10"),
    (["install", "kv-app", "--set", "greeting=a\nb"], "control character"),
    (["upgrade", "kv-app"], "kv-app is not installed"),
])
def test_bad_input_exits_2_and_writes_nothing(addr, store, capsys, argv, words):
    code, _, err = walle(capsys, addr, *argv)
    assert code == 2 and words in err, err
    assert kv_keys(store) == []


def test_a_template_that_renders_an_invalid_job_writes_nothing(addr, store, capsys, tmp_path):
    catalog = tmp_path / "catalog"
    shutil.copytree(CATALOG / "kvstore", catalog / "kvstore")
    shutil.copytree(CATALOG / "kv-app", catalog / "kv-app")
    template = catalog / "kv-app" / "1.1.0" / "templates" / "app.yml.j2"
    template.write_text(template.read_text().replace("memory: 16M-64M", "memory: lots"))
    code, _, err = walle(capsys, addr, "install", "kv-app", "--catalog", str(catalog))
    assert code == 2
    assert "kv-app 1.1.0: templates/app.yml.j2: resources.memory:" in err
    assert "nothing was installed" in err
    assert kv_keys(store) == []  # not even the dependency, which rendered fine


def test_a_dependency_cycle_writes_nothing(addr, store, capsys, tmp_path, monkeypatch):
    for name, dep in (("a", "b"), ("b", "a")):
        folder = tmp_path / name / "1.0.0"
        (folder / "templates").mkdir(parents=True)
        (folder / "package.yml").write_text(
            f"name: {name}\nversion: 1.0.0\ndescription: d\ndependencies: {{{dep}: '>=1'}}\n")
        (folder / "templates" / "job.yml.j2").write_text(
            f"name: {name}\nkind: batch\nresources: {{cpu: 0.1, memory: 8M}}\n"
            f"runtime: {{command: /bin/true}}\n")
    monkeypatch.setenv("WALLE_CATALOG", str(tmp_path))
    code, _, err = walle(capsys, addr, "install", "a")
    assert code == 2 and "dependency cycle: a 1.0.0 -> b 1.0.0 -> a" in err
    assert kv_keys(store) == []


def test_install_never_overwrites_a_job_submitted_by_hand(addr, store, capsys, tmp_path):
    spec = tmp_path / "kvstore.yml"
    spec.write_text("name: kvstore\nkind: batch\nresources: {cpu: 0.1, memory: 8M}\n"
                    "runtime: {command: /bin/true}\n")
    assert main(["run", str(spec), "--consul-addr", addr]) == 0
    before = store.job("kvstore")
    code, _, err = walle(capsys, addr, "install", "kvstore")
    assert code == 2 and "job 'kvstore' already runs and was not installed" in err
    assert store.job("kvstore").version == before.version and store.packages() == {}


def test_a_values_file_sets_values_and_a_bad_one_writes_nothing(addr, store, capsys, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("port: '8081'\nprot: 1\n")
    code, _, err = walle(capsys, addr, "install", "kvstore", "-f", str(bad))
    assert code == 2 and "values file port: expected an integer, got text '8081'" in err
    assert "values file 'prot': unknown parameter; did you mean 'port'?" in err
    assert kv_keys(store) == []
    good = tmp_path / "good.yml"
    good.write_text("port: 7000\nmemory: 128M\n")
    code, _, err = walle(capsys, addr, "install", "kvstore", "-f", str(good), "--set",
                         "port=7001")
    assert code == 0, err
    assert store.job("kvstore").spec["service"]["port"] == 7001  # --set wins over the file
    assert store.packages()["kvstore"][0]["values"] == {"port": 7001, "memory": "128M"}
