"""Constraint regexes come from jobs: they are matched in linear time (RE2), capped in length,
and refused at validation when RE2 cannot run them (issue 9 item 4)."""

from __future__ import annotations

import pytest

from walle.core import reconcile
from walle.core.feasibility import compile_job
from walle.core.testing import make_job, make_node
from walle.jobspec import SpecError, parse_spec
from walle.jobspec.model import Constraint

# The pattern of the report: 60 nested-choice groups before a literal that never matches.
# Python's backtracking `re` took 17 s for one reconcile against 3 nodes with it.
CATASTROPHIC = "(.*)" * 60 + "X"
NODES = [make_node(f"node-{k:03d}-{'abcdefgh' * 3}", zone=f"z{k % 3}") for k in range(40)]


def spec_with_regex(value: object) -> dict:
    return {"name": "web", "kind": "service",
            "resources": {"cpu": 0.1, "memory": "32M"},
            "runtime": {"command": "/usr/bin/true"},
            "constraints": [{"attribute": "name", "operator": "regex", "value": value}]}


@pytest.mark.timeout(60)
def test_a_catastrophic_pattern_is_matched_in_linear_time_in_reconcile():
    job = make_job("web", 2, cpu=(0.1, 0.1), constraints=(
        Constraint("name", "regex", CATASTROPHIC),))
    plan = reconcile({"web": job}, [], NODES, seed=1, now=0)
    (failure,) = plan.failures
    assert failure.slots == (0, 1)
    assert dict(failure.reasons) == {f"constraint name regex {CATASTROPHIC}": len(NODES)}


@pytest.mark.timeout(60)
def test_the_same_pattern_still_places_where_it_matches():
    pattern = "(.*)" * 60 + "node-007"
    job = make_job("web", 1, cpu=(0.1, 0.1), constraints=(Constraint("name", "regex", pattern),))
    plan = reconcile({"web": job}, [], NODES, seed=1, now=0)
    assert not plan.failures
    assert [p.alloc.node for p in plan.places] == [NODES[7].name]


@pytest.mark.timeout(60)
def test_a_pathological_pattern_passes_validation_quickly():
    assert parse_spec(spec_with_regex(CATASTROPHIC)).constraints[0].value == CATASTROPHIC


@pytest.mark.parametrize(("value", "fragment"), [
    ("(a)\\1", "RE2"),                      # backreference
    ("(?=z)z", "RE2"),                      # lookahead
    ("(?<!z)a", "RE2"),                     # lookbehind
    ("a{1001}", "RE2"),                     # repetition beyond RE2's limit
    ("(" + "a" * 300 + ")", "at most 256"),  # length cap
    ("(.*)" * 1000 + "X", "at most 256"),
])
def test_patterns_re2_cannot_run_are_refused_naming_the_field(value, fragment):
    with pytest.raises(SpecError) as caught:
        parse_spec(spec_with_regex(value))
    ((path, message),) = [(p.path, p.message) for p in caught.value.problems]
    assert path == "constraints[0].value"
    assert fragment in message
    assert "\n" not in message


def test_the_core_refuses_an_overlong_pattern_it_is_handed_directly():
    job = make_job("web", constraints=(Constraint("name", "regex", "(.*)" * 1000 + "X"),))
    with pytest.raises(ValueError, match=r"job 'web': constraints\[0\].*at most 256"):
        compile_job(job, default_strategy="binpack")


@pytest.mark.parametrize(("pattern", "name", "holds"), [
    ("^node-00[12]", "node-001-x", True),
    ("^node-00[12]", "node-003-x", False),
    ("z", "node-003-z", True),       # search, not fullmatch: as before
    ("(?i)NODE", "node-1", True),
    ("^$", "node-1", False),
])
def test_regex_rules_keep_search_semantics(pattern, name, holds):
    job = compile_job(make_job("web", constraints=(Constraint("name", "regex", pattern),)),
                      default_strategy="binpack")
    assert job.rules[0].holds(make_node(name)) is holds
