"""The node's grammar (plugins/module_utils/walle_grammar.py), loaded for the scheduler.

One file holds the rules a value must meet to reach a node, and two programs read it: the
Ansible modules on the nodes (Ansible ships it as the walle.pool collection's module_utils, so
it stays stdlib-only and lives in module_utils) and the spec parser here. The scheduler
always runs from a source tree (an editable install: the scheduler role installs it with
`pip install --editable`, and `adapters/runner.py` finds the playbooks and module_utils the
same way), so this shim loads the file from there by path instead of keeping a copy that
could drift. See docs/architecture.md, "One grammar".
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

GRAMMAR_FILE = (Path(__file__).resolve().parents[3] / "plugins" / "module_utils"
                / "walle_grammar.py")
_MODULE_NAME = "walle._node_grammar"


def _load() -> ModuleType:
    loaded = sys.modules.get(_MODULE_NAME)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, GRAMMAR_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the node grammar from {GRAMMAR_FILE}: walle must run "
                          "from its source tree (pip install --editable)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


grammar = _load()
