"""Where Ansible finds the walle.pool collection: the repository root itself.

The Ansible side of Walle (plugins/, roles/, playbooks/, galaxy.yml) is the collection
walle.pool, and the repository root is its root. Ansible finds a collection only under a
folder named `ansible_collections/<namespace>/<name>`, so a link
`.ansible/collections/ansible_collections/walle/pool -> ../../../..` (git-ignored, made at run
time) puts the working tree itself on the collections path: no copy to go stale. ansible.cfg
names `.ansible/collections` (relative to itself), and so does `ansible_env` in runner.py.
ansible-lint and molecule keep their cache in the same `.ansible` folder and leave a link to
the project alone; a copy of the collection that one of them installed there is replaced.

`python -m walle.collection` makes the link (scripts/setup.sh runs it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

NAMESPACE, NAME = "walle", "pool"
REPO_ROOT = Path(__file__).resolve().parents[2]


def collections_dir(repo_root: Path = REPO_ROOT) -> Path:
    """The folder to put on Ansible's collections path (it holds `ansible_collections/`)."""
    return repo_root / ".ansible" / "collections"


def ensure_collection(repo_root: Path = REPO_ROOT) -> Path:
    """Makes (or repairs) the link to `repo_root` and returns `collections_dir`. Safe to call
    from several processes at once: the link is swapped in with one rename."""
    base = collections_dir(repo_root)
    link = base / "ansible_collections" / NAMESPACE / NAME
    target = Path(os.path.relpath(repo_root, link.parent))
    if link.is_symlink() and link.resolve() == repo_root.resolve():
        return base
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_dir() and not link.is_symlink():  # a tool's installed copy: it would go stale
        shutil.rmtree(link)
    staged = link.with_name(f".{NAME}.{os.getpid()}")
    staged.unlink(missing_ok=True)
    staged.symlink_to(target, target_is_directory=True)
    staged.replace(link)
    return base


if __name__ == "__main__":
    print(ensure_collection())
