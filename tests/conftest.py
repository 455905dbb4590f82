"""Shared test configuration: tiers are selected with markers (see pyproject.toml)."""

import os
import sys
from pathlib import Path

from walle.collection import ensure_collection

REPO = Path(__file__).resolve().parent.parent

# Ansible reads the repo's ansible.cfg whatever the working directory of the test run.
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
# The modules' own imports (ansible_collections.walle.pool.plugins.module_utils...) resolve
# in-process, as Ansible resolves them on a node: the repo is the collection walle.pool.
sys.path.insert(0, str(ensure_collection(REPO)))
