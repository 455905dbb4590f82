"""Shared test configuration: tiers are selected with markers (see pyproject.toml)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Ansible reads the repo's ansible.cfg whatever the working directory of the test run.
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
