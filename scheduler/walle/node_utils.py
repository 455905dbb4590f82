"""The files of plugins/module_utils that the scheduler shares with the nodes, loaded here.

Some rules must be the same on both sides: the node grammar (`walle_grammar`) and the Consul
registration of an instance (`walle_consul`). They live in module_utils because Ansible ships
that folder with every module run and the modules cannot import the scheduler package. The
scheduler loads the same files from its source tree (it always runs from one: the scheduler
role installs it with `pip install --editable`, and the tests run with PYTHONPATH=scheduler)
under the names the modules import them by, as the walle.pool collection's
`ansible_collections.walle.pool.plugins.module_utils.<name>` (the source tree is that
collection, walle/collection.py), so a shared file's imports of its siblings resolve here as
they do on a node. See docs/architecture.md, "One grammar" and "One check translation".
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from walle.collection import REPO_ROOT, ensure_collection

MODULE_UTILS = REPO_ROOT / "plugins" / "module_utils"
PACKAGE = "ansible_collections.walle.pool.plugins.module_utils"


def load(name: str) -> ModuleType:
    """plugins/module_utils/<name>.py, imported as the collection's module_utils <name>."""
    if not (MODULE_UTILS / f"{name}.py").is_file():
        raise ImportError(f"cannot load {name} from {MODULE_UTILS}: walle must run from its "
                          "source tree (pip install --editable)")
    collections = str(ensure_collection())
    if collections not in sys.path:
        sys.path.insert(0, collections)
    return importlib.import_module(f"{PACKAGE}.{name}")
