"""The `lab` fixture: a real pool of systemd nodes (nspawn containers) for the session.

Each test session gets its own lab (own bridge and subnet), so sessions can run side by side,
and it is always removed at the end, even when a test fails.
"""

from __future__ import annotations

import os
import shutil

import pytest

from walle.lab.nodes import Lab


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (systemd-nspawn, bridges, mounts)"
    for tool in ("systemd-nspawn", "debootstrap", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run `make setup`"
    return None


@pytest.fixture(scope="session")
def lab():
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)
    lab = Lab(f"t{os.getpid()}", progress=lambda msg: None)
    try:
        lab.up(int(os.environ.get("WALLE_TEST_LAB_NODES", "3")))
        yield lab
    finally:
        lab.down()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
