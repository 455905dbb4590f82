"""Reading package.yml: the shipped catalog loads and renders; bad packages name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from catalog_helpers import SERVICE_TEMPLATE, package

from walle.catalog import CatalogError, load_catalog, parse_package, plan_install, read_package

REPO_CATALOG = Path(__file__).resolve().parents[2] / "catalog"


def test_every_shipped_package_loads_and_renders_valid_specs():
    cat = load_catalog(REPO_CATALOG)
    assert cat.broken == ()
    assert len(cat.packages) >= 5
    for versions in cat.packages.values():
        for pkg in versions.values():
            steps = plan_install(cat, pkg, {}, set())
            assert steps[-1].package is pkg and steps[-1].specs, pkg.ref
            for step in steps:
                for spec in step.specs:
                    assert spec.runtime.command == "/usr/bin/python3"


def test_kv_app_installs_its_store_first_and_learns_its_service_from_the_environment():
    cat = load_catalog(REPO_CATALOG)
    steps = plan_install(cat, cat.get("kv-app"), {}, set())
    assert [s.package.name for s in steps] == ["kvstore", "kv-app"]
    env = dict(steps[1].specs[0].runtime.env)
    assert env["WALLE_DEP_KVSTORE_SERVICE"] == "kvstore.service.consul"
    assert env["WALLE_DEP_KVSTORE_PORT"] == "6380"
    assert steps[1].record.dependencies == {"kvstore": ">=1.1,<2"}


def test_kinds_shipped_cover_service_batch_and_cron():
    cat = load_catalog(REPO_CATALOG)
    kinds = {spec.kind for versions in cat.packages.values() for pkg in versions.values()
             for step in plan_install(cat, pkg, {}, set()) for spec in step.specs}
    assert kinds == {"service", "batch", "cron"}


@pytest.mark.parametrize("change, field, words", [
    ({"name": "Bad_Name"}, "name", "DNS label"),
    ({"version": "one"}, "version", "not a version"),
    ({"descripton": "x"}, "descripton", "unknown key"),
    ({"description": ""}, "description", "required"),
    ({"parameters": {"port": {"type": "int"}}}, "parameters.port.type", "one of string"),
    ({"parameters": {"port": {"type": "integer", "default": 80, "min": 1024}}},
     "parameters.port.default", "below the minimum 1024"),
    ({"parameters": {"m": {"type": "string", "default": "9G", "allowed": ["1G"]}}},
     "parameters.m.default", "not allowed"),
    ({"parameters": {"m": {"type": "string", "min": 1}}}, "parameters.m.min", "only integer"),
    ({"parameters": {"Port": {"type": "integer"}}}, "parameters.Port", "[a-z][a-z0-9_]*"),
    ({"dependencies": {"redis": "at least 2"}}, "dependencies.redis", "not a version range"),
    ({"dependencies": {"app": ">=1"}}, "dependencies.app", "cannot depend on itself"),
    ({"templates": ["missing.yml.j2"]}, "templates", "does not exist"),
])
def test_a_bad_package_file_names_the_field_and_the_fix(change, field, words):
    data = {"name": "app", "version": "1.0.0", "description": "an app", **change}
    with pytest.raises(CatalogError) as err:
        parse_package(data, {"job.yml.j2": SERVICE_TEMPLATE}, {}, "app/1.0.0/package.yml")
    assert f"app/1.0.0/package.yml: {field}: " in str(err.value)
    assert words in str(err.value)


def test_every_problem_of_a_package_is_reported_at_once():
    with pytest.raises(CatalogError) as err:
        parse_package({"name": "X", "version": "?", "description": "d"}, {}, {}, "p")
    assert len(err.value.problems) == 3  # name, version, no template


def test_the_folder_must_match_the_declared_name_and_version(tmp_path):
    folder = tmp_path / "app" / "2.0.0"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "job.yml.j2").write_text(SERVICE_TEMPLATE)
    (folder / "package.yml").write_text("name: app\nversion: 1.0.0\ndescription: d\n")
    with pytest.raises(CatalogError, match="must be <name>/<version>"):
        read_package(folder)
    cat = load_catalog(tmp_path)  # a broken package is reported, not fatal for the others
    assert cat.packages == {} and "must be <name>/<version>" in cat.broken[0]
    with pytest.raises(CatalogError, match="cannot be read"):
        cat.get("app")


def test_a_missing_catalog_folder_says_how_to_point_at_one(tmp_path):
    with pytest.raises(CatalogError, match="WALLE_CATALOG"):
        load_catalog(tmp_path / "nope")


def test_helpers_build_a_valid_package():
    assert package("app").ref == "app 1.0.0"
