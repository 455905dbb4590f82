"""The node's grammar (plugins/module_utils/walle_grammar.py), loaded for the scheduler.

One file holds the rules a value must meet to reach a node, and two programs read it: the
Ansible modules on the nodes (Ansible ships it as the walle.pool collection's module_utils, so
it stays stdlib-only and lives in module_utils) and the spec parser here, which loads that
very file through `walle.node_utils` instead of keeping a copy that could drift. See
docs/architecture.md, "One grammar".
"""

from __future__ import annotations

from walle.node_utils import load

grammar = load("walle_grammar")
