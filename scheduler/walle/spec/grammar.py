"""The node's grammar (plugins/module_utils/walle_grammar.py), loaded for the scheduler.

One file holds the rules a value must meet to reach a node, and two programs read it: the
Ansible modules on the nodes (Ansible ships it as `ansible.module_utils.walle_grammar`, so
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

MODULE_UTILS = Path(__file__).resolve().parents[3] / "plugins" / "module_utils"
GRAMMAR_FILE = MODULE_UTILS / "walle_grammar.py"


def load_module_utils(stem: str) -> ModuleType:
    """A stdlib-only file of plugins/module_utils (walle_grammar, walle_image), loaded once."""
    name = f"walle._node_{stem.removeprefix('walle_')}"
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    path = MODULE_UTILS / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}: walle must run from its source tree "
                          "(pip install --editable)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


grammar = load_module_utils("walle_grammar")
