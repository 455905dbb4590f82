"""The demo's "Try" lines are commands the walle CLI accepts, for the default lab and a named
one (issue 10: the demo once suggested a command with an option in the wrong place)."""

from __future__ import annotations

import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

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


def test_the_curl_lines_name_the_haproxy_frontend_and_its_stats_page():
    spec = load_spec_file("examples/web.yml")
    assert spec.service.lb is not None  # the demo puts web behind HAProxy
    frontend = f"10.77.3.5:{spec.service.lb.port}"
    text = try_next(spec, "http://10.77.3.1:8500", "default", frontend)
    urls = [shlex.split(line.split("#")[0])[1] for line in text.splitlines()
            if line.strip().startswith("curl ")]
    assert len(urls) == 2
    first, stats = (urlsplit(u) for u in urls)
    assert (first.scheme, first.hostname, first.port, first.path) == (
        "http", "10.77.3.5", spec.service.lb.port, "/")
    # the lb role's stats page (roles/lb/defaults walle_lb_stats_port) in CSV
    assert (stats.hostname, stats.port, stats.path) == (
        "10.77.3.5", int(lb_defaults()["walle_lb_stats_port"]), "/stats;csv")


def test_the_node_to_kill_is_the_one_given():
    text = try_next(load_spec_file("examples/web.yml"), "http://127.0.0.1:8500", "default",
                    victim="node3")
    assert "walle lab kill node3 " in text and "walle lab restart node3 " in text
    assert "node2" not in text


def test_without_a_balancer_no_curl_line():
    text = try_next(load_spec_file("examples/web.yml"), "http://127.0.0.1:8500", "default")
    assert "curl" not in text


def lb_defaults() -> dict:
    return yaml.safe_load(Path("roles/lb/defaults/main.yml").read_text())
