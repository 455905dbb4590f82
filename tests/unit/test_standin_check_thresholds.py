"""Check status thresholds, from https://developer.hashicorp.com/consul/api-docs/agent/check
(Register Check: SuccessBeforePassing, FailuresBeforeWarning, FailuresBeforeCritical) and
https://developer.hashicorp.com/consul/docs/services/usage/checks ("Success/Failures before
passing/warning/critical"): a status changes only after that many consecutive results;
FailuresBeforeWarning defaults to FailuresBeforeCritical."""

from walle.lab.consul_standin.checkrunner import Thresholds


def run(spec: dict, results: list[str]) -> list[str | None]:
    thresholds = Thresholds(spec)
    return [thresholds.status_for(r) for r in results]


def test_without_thresholds_every_result_counts_at_once():
    assert run({}, ["critical", "passing", "warning"]) == ["critical", "passing", "warning"]


def test_failures_before_critical_needs_consecutive_failures():
    spec = {"FailuresBeforeCritical": 3, "FailuresBeforeWarning": 3}
    assert run(spec, ["critical", "critical", "passing", "critical", "critical", "critical"]) \
        == [None, None, "passing", None, None, "critical"]


def test_failures_before_warning_turns_warning_first():
    spec = {"FailuresBeforeCritical": 3, "FailuresBeforeWarning": 1}
    assert run(spec, ["critical", "critical", "critical"]) == ["warning", "warning", "critical"]


def test_success_before_passing_needs_consecutive_successes():
    spec = {"SuccessBeforePassing": 2}
    assert run(spec, ["passing", "critical", "passing", "passing"]) == \
        [None, "critical", None, "passing"]
