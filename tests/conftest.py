"""Shared test configuration: tiers are selected with markers (see pyproject.toml)."""

import os
import sys
from pathlib import Path

import pytest

from walle.collection import ensure_collection

REPO = Path(__file__).resolve().parent.parent

# Ansible reads the repo's ansible.cfg whatever the working directory of the test run.
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
# The modules' own imports (ansible_collections.walle.pool.plugins.module_utils...) resolve
# in-process, as Ansible resolves them on a node: the repo is the collection walle.pool.
sys.path.insert(0, str(ensure_collection(REPO)))


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def chromium():
    """Debian's headless chromium driven by playwright (tests marked `browser`); nothing is
    downloaded: `make setup` installs both. One per module (about a second to start), so
    playwright's event loop never outlives the browser tests into other modules."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # root has no user namespace sandbox for chromium here
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield context.new_page()
    finally:
        context.close()
