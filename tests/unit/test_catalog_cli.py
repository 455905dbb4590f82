"""`walle package list | search | info`: read only the catalog folder."""

from __future__ import annotations

import json

from walle.cli.main import main


def walle(capsys, *argv):
    code = main(["package", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_package_with_its_newest_version(capsys):
    code, out, _ = walle(capsys, "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and {"static-site", "kvstore", "kv-app", "backup", "primes"} <= set(rows)
    assert rows["kv-app"]["version"] == "1.1.0" and rows["kv-app"]["versions"] == "1.0.0, 1.1.0"


def test_search_matches_names_and_descriptions_case_blind(capsys):
    code, out, _ = walle(capsys, "search", "CRON", "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["backup"]


def test_info_shows_parameters_ranges_and_dependencies(capsys):
    code, out, _ = walle(capsys, "info", "kv-app", "--version", "1.0.0", "--json")
    info = json.loads(out)
    assert code == 0 and info["dependencies"] == {"kvstore": ">=1.0,<2"}
    port = next(p for p in info["parameters"] if p["parameter"] == "port")
    assert port == {"parameter": "port", "type": "integer", "default": 8081, "allowed": None,
                    "range": "1024..65535", "description": ""}


def test_info_of_an_unknown_package_exits_2(capsys):
    code, _, err = walle(capsys, "info", "nosuch")
    assert code == 2 and "unknown package 'nosuch'" in err


def test_catalog_option_and_environment_point_at_another_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WALLE_CATALOG", str(tmp_path))
    code, out, _ = walle(capsys, "list", "--json")
    assert code == 0 and json.loads(out) == []
    code, _, err = walle(capsys, "list", "--catalog", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err
