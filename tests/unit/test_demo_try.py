"""The demo's "Try" lines are commands the walle CLI accepts, for the default lab and a named
one (issue 10: the demo once suggested a command with an option in the wrong place)."""

from __future__ import annotations

import shlex

import pytest

from walle.cli.demo import try_next
from walle.cli.main import build_parser
from walle.jobspec import load_spec_file


@pytest.mark.parametrize("lab", ["default", "demo2"])
def test_every_suggested_command_parses(lab):
    text = try_next(load_spec_file("examples/web.yml"), "http://127.0.0.1:8500", lab)
    commands = [part.split("#")[0].strip() for line in text.splitlines()[1:]
                for part in line.split(";")]
    commands = [c for c in commands if c.startswith("walle ")]
    assert len(commands) >= 7
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert args.func, command
        if command.startswith("walle lab"):
            assert args.name == lab, command
