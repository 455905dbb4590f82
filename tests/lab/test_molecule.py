"""`molecule test` of the node role on real lab nodes: create, converge, idempotence, verify,
destroy. Boots its own lab named "molecule" (see molecule/default/) and always removes it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
LAB_NAME = "molecule"
MOLECULE_TIMEOUT = 600
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A line of the summary: "default ➜ converge: Executed: Successful" (">" without a terminal).
STEP = re.compile(r"^(?P<scenario>[\w-]+) (?:➜|>) (?P<step>\w+): Executed: (?P<result>\w+)", re.M)


def executed_steps(output: str) -> dict[str, str]:
    """Each step in molecule's summary with its result, e.g. {"idempotence": "Successful"}."""
    return {m["step"]: m["result"] for m in STEP.finditer(ANSI.sub("", output))}


def test_executed_steps_reads_molecule_summary():
    text = ("INFO default ➜ create: Executed: Successful\n"
            "\x1b[32mdefault\x1b[0m ➜ \x1b[33mconverge\x1b[0m: "
            "\x1b[32mExecuted: Successful\x1b[0m\n"
            "default > idempotence: Executed: Failed\n")
    assert executed_steps(text) == {"converge": "Successful", "idempotence": "Failed"}


@pytest.fixture
def molecule_lab_removed():
    """Whatever molecule does, the lab it made is gone afterwards."""
    yield
    subprocess.run([str(VENV_BIN / "walle"), "lab", "--name", LAB_NAME, "down"],
                   capture_output=True, timeout=120, check=False)
    assert not (Path(os.environ.get("WALLE_LAB_ROOT", "/var/lib/walle/lab")) / LAB_NAME).exists()


@pytest.mark.timeout(MOLECULE_TIMEOUT + 120)
def test_molecule_test_converges_idempotently(molecule_lab_removed):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (systemd-nspawn, bridges, mounts)")
    if not (VENV_BIN / "molecule").exists() or shutil.which("systemd-nspawn") is None:
        pytest.skip("needs molecule in the venv and systemd-nspawn")
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
           "WALLE_MOLECULE_LAB": LAB_NAME, "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1"}

    started = time.monotonic()
    proc = subprocess.run([str(VENV_BIN / "molecule"), "test"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=MOLECULE_TIMEOUT)
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr

    assert proc.returncode == 0, f"molecule test failed after {elapsed:.0f}s:\n{output[-6000:]}"
    steps = executed_steps(output)
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert steps.get(step) == "Successful", f"{step}: {steps.get(step)}\n{output[-3000:]}"
    print(f"molecule test took {elapsed:.1f}s")
