"""Dependency resolution and install plans: order, cycles, ranges, ownership, uninstall."""

from __future__ import annotations

import pytest
from catalog_helpers import catalog, package

from walle.catalog import CatalogError, Installed, plan_install, plan_uninstall, resolve


def names(pkgs):
    return [p.ref for p in pkgs]


def test_dependencies_come_first_and_the_newest_version_in_range_is_chosen():
    cat = catalog(package("db", "1.0"), package("db", "1.5"), package("db", "2.0"),
                  package("cache"), package("app", deps={"db": ">=1,<2", "cache": ">=1"}))
    assert names(resolve(cat, cat.get("app"), {})) == ["db 1.5", "cache 1.0.0", "app 1.0.0"]


def test_a_shared_dependency_is_installed_once():
    cat = catalog(package("db"), package("api", deps={"db": ">=1"}),
                  package("app", deps={"api": ">=1", "db": ">=1"}))
    assert names(resolve(cat, cat.get("app"), {})) == ["db 1.0.0", "api 1.0.0", "app 1.0.0"]


def test_a_cycle_is_refused_and_named():
    cat = catalog(package("a", deps={"b": ">=1"}), package("b", deps={"c": ">=1"}),
                  package("c", deps={"a": ">=1"}))
    with pytest.raises(CatalogError,
                       match="dependency cycle: a 1.0.0 -> b 1.0.0 -> c 1.0.0 -> a$"):
        resolve(cat, cat.get("a"), {})


def test_a_range_nothing_satisfies_lists_the_versions_there_are():
    cat = catalog(package("redis", "1.0"), package("redis", "1.1"),
                  package("app", deps={"redis": ">=2,<3"}))
    with pytest.raises(CatalogError) as err:
        resolve(cat, cat.get("app"), {})
    assert str(err.value) == ("no version satisfies >=2,<3 of redis (have 1.0, 1.1); "
                              "needed by app 1.0.0")


def test_unknown_packages_and_versions_are_named():
    cat = catalog(package("db"), package("app", deps={"nosuch": ">=1"}))
    with pytest.raises(CatalogError, match="unknown package 'nope'"):
        cat.get("nope")
    with pytest.raises(CatalogError, match=r"package db has no version 9.9 \(have 1.0.0\)"):
        cat.get("db", "9.9")
    with pytest.raises(CatalogError, match="not a version"):
        cat.get("db", "latest!")
    with pytest.raises(CatalogError, match="app 1.0.0 depends on unknown package 'nosuch'"):
        resolve(cat, cat.get("app"), {})


def installed(name, version="1.0.0", jobs=None, deps=None, service=None):
    return Installed(name, version, {}, tuple(jobs or [name]), deps or {}, service, 7)


def test_an_installed_dependency_in_range_is_used_and_one_out_of_range_refused():
    cat = catalog(package("db", "1.0.0"), package("db", "2.0.0"),
                  package("app", deps={"db": ">=1,<2"}))
    have = {"db": installed("db", service={"service": "db", "port": 5000})}
    steps = plan_install(cat, cat.get("app"), have, {"db"})
    assert [s.package.ref for s in steps] == ["app 1.0.0"]
    env = dict(steps[0].specs[0].runtime.env)
    assert env["WALLE_DEP_DB_SERVICE"] == "db.service.consul"
    assert env["WALLE_DEP_DB_PORT"] == "5000"
    with pytest.raises(CatalogError, match="db 2.0.0 is installed: upgrade it first"):
        plan_install(cat, cat.get("app"), {"db": installed("db", "2.0.0")}, {"db"})


def test_install_refuses_a_package_already_installed_and_upgrade_one_that_is_not():
    cat = catalog(package("app"))
    with pytest.raises(CatalogError, match="already installed; use `walle package upgrade app`"):
        plan_install(cat, cat.get("app"), {"app": installed("app")}, {"app"})
    with pytest.raises(CatalogError, match="app is not installed"):
        plan_install(cat, cat.get("app"), {}, set(), upgrade=True)


def test_upgrade_keeps_values_replaces_the_record_and_stops_dropped_jobs():
    cat = catalog(package("app", "2.0.0"))
    old = Installed("app", "1.0.0", {"port": 9000}, ("app", "app-worker"), {}, None, 42)
    (step,) = plan_install(cat, cat.get("app"), {"app": old}, {"app", "app-worker"},
                           sets={"count": "3"}, upgrade=True)
    assert step.record.values == {"port": 9000, "count": 3, "greeting": "hi"}
    assert step.record.modify_index == 42 and step.replaces is old
    assert step.stale_jobs == ("app-worker",)


def test_upgrade_refuses_a_version_an_installed_dependent_does_not_accept():
    cat = catalog(package("db", "2.0.0"))
    have = {"db": installed("db"), "app": installed("app", deps={"db": ">=1,<2"})}
    with pytest.raises(CatalogError, match="app 1.0.0 needs db >=1,<2, so db 2.0.0 cannot"):
        plan_install(cat, cat.get("db"), have, {"db", "app"}, upgrade=True)


def test_a_package_never_takes_over_a_job_it_does_not_own():
    cat = catalog(package("app"))
    with pytest.raises(CatalogError, match="job 'app' already runs and was not installed"):
        plan_install(cat, cat.get("app"), {}, {"app"})
    have = {"other": installed("other", jobs=["app"])}
    with pytest.raises(CatalogError, match="job 'app' belongs to package other"):
        plan_install(cat, cat.get("app"), have, {"app"})


def test_uninstall_refuses_while_a_dependent_remains_and_cascade_removes_dependents_first():
    have = {"db": installed("db"), "api": installed("api", deps={"db": ">=1"}),
            "app": installed("app", deps={"api": ">=1"})}
    with pytest.raises(CatalogError, match="db is needed by api: uninstall it first, or use "
                                           "--cascade"):
        plan_uninstall(have, "db", cascade=False)
    assert [r.name for r in plan_uninstall(have, "db", cascade=True)] == ["app", "api", "db"]
    assert [r.name for r in plan_uninstall(have, "app", cascade=False)] == ["app"]
    with pytest.raises(CatalogError, match="'nope' is not installed"):
        plan_uninstall(have, "nope", cascade=False)


def test_a_malformed_record_is_refused():
    with pytest.raises(CatalogError, match="package record x: field 'jobs'"):
        Installed.from_json("x", {"version": "1", "values": {}, "jobs": "a",
                                  "dependencies": {}}, 1)
