"""The files of plugins/module_utils that the scheduler shares with the nodes, loaded here.

Some rules must be the same on both sides: the node grammar (`walle_grammar`) and the Consul
registration of an instance (`walle_consul`). They live in module_utils because Ansible ships
that folder with every module run and the modules cannot import the scheduler package. The
scheduler loads the same files from its source tree (it always runs from one: the scheduler
role installs it with `pip install --editable`, and the tests run with PYTHONPATH=scheduler)
under the names the modules import them by, `ansible.module_utils.<name>`, so a shared file's
imports of its siblings resolve here as they do on a node. That is what ANSIBLE_MODULE_UTILS
does for a playbook run. See docs/architecture.md, "One grammar" and "One check translation".
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

MODULE_UTILS = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"


def load(name: str) -> ModuleType:
    """plugins/module_utils/<name>.py, imported as ansible.module_utils.<name>."""
    if not (MODULE_UTILS / f"{name}.py").is_file():
        raise ImportError(f"cannot load {name} from {MODULE_UTILS}: walle must run from its "
                          "source tree (pip install --editable)")
    import ansible.module_utils as shipped

    if str(MODULE_UTILS) not in shipped.__path__:
        shipped.__path__.append(str(MODULE_UTILS))
    return importlib.import_module(f"ansible.module_utils.{name}")
