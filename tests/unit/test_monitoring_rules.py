"""Walle's alert rules (roles/monitoring/files/walle.rules.yml) under `promtool test rules`:
each alert fires on the series that should raise it, after its `for`, and stays quiet on a
healthy neighbour (tests/unit/data/monitoring/walle_rules_test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "roles/monitoring/files/walle.rules.yml"
TESTS = Path(__file__).parent / "data/monitoring/walle_rules_test.yml"

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None,
                                reason="promtool missing (Debian package prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def run_rule_tests(tmp_path: Path, rules_text: str) -> subprocess.CompletedProcess:
    rules = tmp_path / "walle.rules.yml"
    rules.write_text(rules_text)
    tests = tmp_path / "walle_rules_test.yml"
    tests.write_text(TESTS.read_text().replace("  - RULES\n", f"  - {rules}\n", 1))
    return promtool("test", "rules", str(tests))


def test_rules_are_valid():
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout


def test_every_alert_fires_when_it_should_and_only_then(tmp_path):
    proc = run_rule_tests(tmp_path, RULES.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("before, after", [
    ("> 0.9", "> 0.99"),                     # memory threshold loosened
    (">= 3", ">= 4"),                        # restarts threshold loosened
    ("or vector(0)) < 1", ") < 1"),           # leader: silence when nothing reports
])
def test_the_rule_tests_catch_a_broken_rule(tmp_path, before, after):
    text = RULES.read_text()
    assert before in text
    proc = run_rule_tests(tmp_path, text.replace(before, after, 1))
    assert proc.returncode != 0, "promtool accepted a broken rule"
