"""Parameter values: --set text read by declared type, ranges, allowed values, unknown names."""

from __future__ import annotations

import pytest
from catalog_helpers import package

from walle.catalog import CatalogError, parse_sets, resolve_values

PARAMS = {
    "port": {"type": "integer", "default": 8080, "min": 1024, "max": 65535},
    "cpu": {"type": "number", "default": 0.5, "min": 0.1, "max": 4},
    "debug": {"type": "boolean", "default": False},
    "memory": {"type": "string", "default": "64M", "allowed": ["32M", "64M"]},
    "greeting": {"type": "string", "default": "hi"},
    "count": {"type": "integer", "default": 1},
}


def values(**kw):
    return resolve_values(package("app", params=PARAMS), **kw)


def test_defaults_apply_and_set_text_is_read_as_the_declared_type():
    got = values(sets=parse_sets(["port=9000", "cpu=1.5", "debug=yes", "greeting=42"]))
    assert got == {"port": 9000, "cpu": 1.5, "debug": True, "memory": "64M",
                   "greeting": "42", "count": 1}


def test_set_wins_over_the_values_file_which_wins_over_kept_values():
    got = values(kept={"port": 2000, "count": 3}, file_values={"port": 3000},
                 sets={"port": "4000"})
    assert got["port"] == 4000 and got["count"] == 3


@pytest.mark.parametrize("sets, words", [
    ({"port": "80x"}, "--set port: expected an integer, got '80x'"),
    ({"port": "80"}, "--set port: 80 is below the minimum 1024"),
    ({"port": "70000"}, "above the maximum 65535"),
    ({"cpu": "lots"}, "--set cpu: expected a number"),
    ({"cpu": "1e999"}, "expected a finite number"),
    ({"debug": "maybe"}, "expected a boolean (true or false)"),
    ({"memory": "1G"}, "'1G' is not allowed; choose one of '32M', '64M'"),
    ({"prot": "1"}, "unknown parameter; did you mean 'port'?"),
])
def test_bad_set_values_are_refused_naming_the_parameter(sets, words):
    with pytest.raises(CatalogError) as err:
        values(sets=sets)
    assert words in str(err.value)


@pytest.mark.parametrize("given, words", [
    ({"port": "8080"}, "expected an integer, got text '8080'"),
    ({"port": True}, "expected an integer, got boolean True"),
    ({"greeting": 5}, "expected a string, got integer 5; quote it"),
    ({"debug": "true"}, "expected a boolean"),
])
def test_a_values_file_must_give_typed_values(given, words):
    with pytest.raises(CatalogError, match="values file") as err:
        values(file_values=given)
    assert words in str(err.value)


def test_a_required_parameter_without_a_value_is_named():
    pkg = package("app", params={"token": {"type": "string"}})
    with pytest.raises(CatalogError, match="parameter token is required: --set token="):
        resolve_values(pkg)


def test_kept_values_of_parameters_a_new_version_dropped_are_ignored():
    assert values(kept={"gone": 1})["port"] == 8080


def test_set_needs_a_name_and_an_equals_sign():
    assert parse_sets(["a=b=c"]) == {"a": "b=c"}
    with pytest.raises(CatalogError, match="expected NAME=VALUE"):
        parse_sets(["novalue"])
