"""One duration format: every duration Walle writes for systemd, Consul or a person reading a
refusal is the node grammar's ("30s", "1500ms"), which the spec parser reads back."""

from __future__ import annotations

import pytest

from walle.adapters.consul import go_duration
from walle.jobspec import SpecError, parse_spec
from walle.jobspec.grammar import grammar

SPEC = {"name": "web", "kind": "service", "count": 1,
        "resources": {"cpu": 0.5, "memory": "64M"},
        "runtime": {"command": "/usr/bin/python3"}, "service": {"port": 8080}}


@pytest.mark.parametrize("seconds", [0, 0.001, 0.5, 1.5, 2, 60, 90.25, 86400])
def test_consul_durations_are_the_grammars(seconds):
    assert go_duration(seconds) == grammar.format_duration(seconds)
    assert grammar.parse_duration(go_duration(seconds)) == pytest.approx(seconds)


def test_a_range_refusal_writes_durations_the_spec_reads_back():
    with pytest.raises(SpecError) as refused:
        parse_spec({**SPEC, "health": {"type": "tcp", "timeout": "50ms"}})
    message = str(refused.value)
    assert "must be between 100ms and 3600s, got 50ms" in message  # was 0.1s ... 0.05s
