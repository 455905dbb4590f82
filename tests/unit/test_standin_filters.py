"""The stand-in's ?filter= language against Consul's documentation:
https://developer.hashicorp.com/consul/api-docs/features/filtering (operators, selectors,
values, `or`/`and`/`not`, parentheses and precedence) and the per-type operator tables of
https://developer.hashicorp.com/consul/api-docs/catalog ("Filtering"). Invalid expressions
fail the request with Consul's 500 "Failed to create boolean expression evaluator"
(hashicorp/consul#7338)."""

from __future__ import annotations

import pytest

from walle.lab.consul_standin.errors import ConsulError
from walle.lab.consul_standin.filters import CHECK, HEALTH_ROW, SERVICE, compile_filter

# filtering.mdx, "Filtering Examples / Agent API": redis1..3
REDIS = {
    "redis1": {"ID": "redis1", "Service": "redis", "Tags": ["primary", "production"],
               "Meta": {"env": "production", "foo": "bar"}, "Port": 1234, "Address": "",
               "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False},
    "redis2": {"ID": "redis2", "Service": "redis", "Tags": ["secondary", "production"],
               "Meta": {"env": "production", "foo": "bar"}, "Port": 1235, "Address": "",
               "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False},
    "redis3": {"ID": "redis3", "Service": "redis", "Tags": ["primary", "qa"],
               "Meta": {"env": "qa"}, "Port": 1234, "Address": "",
               "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False},
}


def ids(expr: str) -> list[str]:
    keep = compile_filter(expr, SERVICE)
    return sorted(k for k, v in REDIS.items() if keep(v))


def test_documented_agent_example():
    assert ids('Meta.env == "qa"') == ["redis3"]


@pytest.mark.parametrize("expr, expected", [
    ('Service == "redis"', ["redis1", "redis2", "redis3"]),
    ('ID != "redis1"', ["redis2", "redis3"]),
    ('Tags contains "primary"', ["redis1", "redis3"]),
    ('Tags not contains "primary"', ["redis2"]),
    ('"qa" in Tags', ["redis3"]),
    ('"qa" not in Tags', ["redis1", "redis2"]),
    ('Meta is not empty', ["redis1", "redis2", "redis3"]),
    ('Tags is empty', []),
    ('ID matches "^redis[12]$"', ["redis1", "redis2"]),
    ('ID not matches "1"', ["redis2", "redis3"]),
    ('"prod" in ID', []),  # substring match on a string
    ('ID contains "dis3"', ["redis3"]),
    # map keys: `.key` or `["key"]`; a missing key: positive false, negated true
    ('Meta["foo"] == "bar"', ["redis1", "redis2"]),
    ('Meta.foo != "bar"', ["redis3"]),
    ('"foo" in Meta', ["redis1", "redis2"]),
    # numbers and bools convert to the field's type, quoted or not
    ("Port == 1234", ["redis1", "redis3"]),
    ('Port == "1235"', ["redis2"]),
    ("Weights.Passing == 1", ["redis1", "redis2", "redis3"]),
    ("EnableTagOverride == false", ["redis1", "redis2", "redis3"]),
    # bare identifiers are values; raw strings in backticks
    ("primary in Tags", ["redis1", "redis3"]),
    ("ID == `redis2`", ["redis2"]),
])
def test_matching_operators(expr, expected):
    assert ids(expr) == expected


def test_boolean_logic_and_precedence():
    # filtering.mdx: `A and not B or C` == `(A and (not B)) or C`
    a, b, c = '"primary" in Tags', 'Meta.env == "qa"', 'ID == "redis2"'
    assert ids(f"{a} and not {b} or {c}") == ids(f"({a} and (not {b})) or {c}") == \
        ["redis1", "redis2"]
    assert ids(f"{a} and ({b} or {c})") == ["redis3"]
    assert ids(f"not ({a})") == ["redis2"]


def test_health_row_selectors_reach_nested_and_listed_fields():
    row = {"Node": {"Node": "n1", "Meta": {"zone": "a"}},
           "Service": {"Service": "web", "Tags": ["v1"], "Port": 80},
           "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
                      {"CheckID": "service:web", "Status": "critical"}]}
    assert compile_filter('Node.Meta.zone == "a" and Service.Tags contains "v1"',
                          HEALTH_ROW)(row)
    assert compile_filter('Checks.Status == "critical"', HEALTH_ROW)(row)
    assert not compile_filter('Checks.CheckID == "other"', HEALTH_ROW)(row)


def test_no_filter_keeps_everything():
    assert compile_filter(None, CHECK)({}) and compile_filter("", CHECK)({})


@pytest.mark.parametrize("expr", [
    "foo",                           # hashicorp/consul#7338: not an expression
    "Address == 10.10.10.10",        # hashicorp/consul#9441: invalid number literal
    'Nope == "x"',                   # unknown selector
    'Meta == "x"',                   # == on a map
    'Tags == "x"',                   # == on a list
    'Port contains "1"',             # contains on an int
    'Port == "eighty"',              # does not convert to an int
    'EnableTagOverride == "maybe"',
    'ID matches "("',                # bad regular expression
    '(ID == "a"',                    # unbalanced parenthesis
    'ID == "a" and',
    'Weights == "1"',                # a structure, not a value
    "Address is empty",              # catalog.mdx: strings take no Is Empty
    'Tags matches "x"',              # ... lists no Matches
])
def test_invalid_expressions_fail_like_consul(expr):
    with pytest.raises(ConsulError) as err:
        compile_filter(expr, SERVICE)
    assert err.value.status == 500
    assert err.value.message.startswith("Failed to create boolean expression evaluator")


def test_a_consul_field_the_standin_does_not_model_is_400_not_ignored():
    with pytest.raises(ConsulError) as err:
        compile_filter('Proxy.DestinationServiceName == "x"', SERVICE)
    assert err.value.status == 400 and "Proxy.DestinationServiceName" in err.value.message


def test_checks_of_a_health_row_take_is_empty():
    # health.mdx List Service Instances: `Checks` supports Is Empty, Is Not Empty
    assert compile_filter("Checks is not empty", HEALTH_ROW)({"Checks": [{"Status": "x"}]})
    assert compile_filter("Checks is empty", HEALTH_ROW)({"Checks": []})
    with pytest.raises(ConsulError):
        compile_filter('Checks == "x"', HEALTH_ROW)


def test_strings_take_escapes_and_keep_unicode():
    keep = compile_filter('Meta.env == "caf\\u00e9 \\"x\\"" or Meta.env == "naïve"', SERVICE)
    assert keep({"Meta": {"env": 'café "x"'}}) and keep({"Meta": {"env": "naïve"}})
    with pytest.raises(ConsulError):
        compile_filter('ID matches "\\d"', SERVICE)  # not a Go escape: use `raw` strings
    assert compile_filter("ID matches `^r\\d$`", SERVICE)({"ID": "r1"})


def test_selector_names_are_letters_digits_and_underscores():
    # filtering.mdx Selectors: a map key outside that set is written Meta["key"]
    with pytest.raises(ConsulError):
        compile_filter('Meta.my-key == "x"', SERVICE)
    assert compile_filter('Meta["my-key"] == "x"', SERVICE)({"Meta": {"my-key": "x"}})
