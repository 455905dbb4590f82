"""`walle ... | head`: a reader that goes away ends the command quietly (exit 141), no
traceback (seen with `walle plan web | head -6` in the demo lab)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    specs = [str(ROOT / "examples" / "web.yml")] * 2000  # more output than a pipe buffer
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scheduler")}
    proc = subprocess.Popen([sys.executable, "-m", "walle.cli.main", "validate", *specs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.read(10)
    proc.stdout.close()  # as `head` does once it has its lines
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err
