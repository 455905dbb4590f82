"""Ansible's own checks on the walle.pool collection (issue 10 item 9): ansible-lint with the
production profile and ansible-test sanity must both be clean.

Slow (minutes; marker `ansible_checks`). ansible-test runs on the collection as it ships: built
with `ansible-galaxy collection build` (galaxy.yml's build_ignore keeps the scheduler, its
tests and the lab out) and installed under a temporary ansible_collections/walle/pool. Its
sanity tests that need Python packages run in virtualenvs it makes and fills from the package
index (cached in ~/.ansible/test/venv; the first run takes several minutes). Ignores, each
with its reason, are in tests/sanity/ignore-2.19.txt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from walle.collection import ensure_collection

pytestmark = [pytest.mark.ansible_checks, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
GET_PIP_SHIM = Path(__file__).with_name("get_pip_offline.py")
SHIM_MARK = "Stands in for pip's get-pip.py"  # the first line of the shim's docstring
# What the built collection holds at its top level: the Ansible parts only.
COLLECTION_TOP = {"CHANGELOG.md", "FILES.json", "MANIFEST.json", "README.md", "meta",
                  "playbooks", "plugins", "roles", "site.yml", "tests"}


def run(argv: list, cwd: Path, timeout: float, *, outside_repo: bool = False
        ) -> subprocess.CompletedProcess:
    """`outside_repo`: without the repo's ansible.cfg, whose collections path already holds
    walle.pool (the working tree), so Ansible sees only the built collection."""
    env = dict(os.environ)
    if outside_repo:
        for name in ("ANSIBLE_CONFIG", "ANSIBLE_COLLECTIONS_PATH"):
            env.pop(name, None)
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


@pytest.fixture(scope="module")
def installed_collection(tmp_path_factory) -> Path:
    """The collection as `ansible-galaxy` builds and installs it."""
    base = tmp_path_factory.mktemp("collection")
    built = run([VENV_BIN / "ansible-galaxy", "collection", "build", REPO,
                 "--output-path", base], base, 300, outside_repo=True)
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = base.glob("walle-pool-*.tar.gz")
    # --force: a walle.pool another tool installed in ~/.ansible must not stand in for this one
    installed = run([VENV_BIN / "ansible-galaxy", "collection", "install", "--force", tarball,
                     "-p", base / "collections"], base, 300, outside_repo=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return base / "collections" / "ansible_collections" / "walle" / "pool"


def provide_pip_bootstrap() -> None:
    """ansible-test bootstraps pip in each virtualenv with a get-pip.py it downloads from a
    host this project's machines cannot reach; it uses a cached copy when there is one, so the
    stand-in (get_pip_offline.py) goes there unless a real get-pip.py already does."""
    from ansible_test._internal.python_requirements import get_venv_packages

    pip = get_venv_packages(types.SimpleNamespace(version=PYTHON))["pip"]
    cached = Path.home() / ".ansible" / "test" / "cache" / f"get_pip_{pip.replace('.', '_')}.py"
    if cached.exists() and SHIM_MARK not in cached.read_text(errors="replace"):
        return  # a real get-pip.py
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GET_PIP_SHIM, cached)


def test_the_collection_ships_only_its_ansible_parts(installed_collection):
    top = {p.name for p in installed_collection.iterdir()}
    assert top == COLLECTION_TOP
    assert {p.name for p in (installed_collection / "tests").iterdir()} == {"sanity"}
    modules = {p.stem for p in (installed_collection / "plugins" / "modules").glob("*.py")}
    assert modules == {"walle_slice", "walle_workload", "walle_facts", "walle_consul_service",
                       "walle_image"}


def test_ansible_lint_production_profile_is_clean():
    # With the link in place ansible-lint uses the working tree as walle.pool, instead of
    # building and installing a copy into .ansible/ that the runner would then find stale.
    ensure_collection(REPO)
    proc = run([VENV_BIN / "ansible-lint", "--profile", "production", "--nocolor", "-f", "pep8"],
               REPO, 1800)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output, output


def test_ansible_test_sanity_is_clean(installed_collection):
    provide_pip_bootstrap()
    proc = run([VENV_BIN / "ansible-test", "sanity", "--python", PYTHON, "--local",
                "--color", "no"], installed_collection, 2100, outside_repo=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-20000:]
    assert "ERROR:" not in output, output[-20000:]
