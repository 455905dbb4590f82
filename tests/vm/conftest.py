"""The vm tier: one qemu VM (full cgroup v2) per pytest session, driven through Walle's own
Ansible modules (plugins/modules/walle_slice.py, walle_workload.py) over SSH.

Measured figures (boot time, CPU shares, quota use) are collected in `vmtools.FIGURES`, printed
in the terminal summary and written to `<pytest basetemp>/vm-figures.json`.
"""

from __future__ import annotations

import json
import os
import shlex

import psutil
import pytest
from vmtools import FIGURES, Walle

from walle.lab import vm as walle_vm


@pytest.fixture(scope="session")
def vm(tmp_path_factory):
    reason = walle_vm.qemu_available()
    if reason:
        pytest.skip(f"vm tier skipped: {reason}")
    if os.geteuid() != 0 and not walle_vm.vm_image_cached():
        pytest.skip("vm tier skipped: no cached VM image, and building one needs root "
                    "(run the vm tier once as root)")
    with walle_vm.booted_vm() as machine:
        FIGURES["boot_seconds"] = round(machine.boot_seconds, 1)
        yield machine
    results = tmp_path_factory.getbasetemp() / "vm-figures.json"
    results.write_text(json.dumps(FIGURES, indent=2) + "\n")
    # The harness promises to end qemu by PID and remove the overlay: hold it to that.
    assert not psutil.pid_exists(machine.pid), f"qemu (pid {machine.pid}) still runs"
    assert not machine.workdir.exists(), f"{machine.workdir} (overlay) was not removed"


@pytest.fixture(scope="session")
def walle(vm):
    return Walle(vm)


@pytest.fixture
def units_to_stop(vm):
    """Tests append the units they start; they are stopped (and their failure forgotten) after
    the test, pass or fail, so the next test measures on a quiet VM."""
    units: list[str] = []
    yield units
    if units:
        names = " ".join(shlex.quote(u) for u in units)
        vm.run(f"systemctl stop {names}; systemctl reset-failed {names}", timeout=60)


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.write_sep("-", "vm tier: measured figures")
        for key, value in FIGURES.items():
            terminalreporter.write_line(f"{key}: {value}")
