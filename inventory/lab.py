#!/usr/bin/env python3
"""Dynamic inventory of the local lab (`walle lab up`): the nodes of lab $WALLE_LAB
(default "default"). Real fleets use their own inventory files instead (see docs/operations.md)."""

import json
import os
import sys
from pathlib import Path

lab_root = Path(os.environ.get("WALLE_LAB_ROOT", "/var/lib/walle/lab"))
path = lab_root / os.environ.get("WALLE_LAB", "default") / "inventory.json"


def to_script_format(inv: dict) -> dict:
    top = inv["all"]
    hosts = top["children"]["walle_nodes"]["hosts"] or {}
    return {
        "all": {"vars": top.get("vars", {}), "children": ["walle_nodes"]},
        "walle_nodes": {"hosts": sorted(hosts)},
        "_meta": {"hostvars": hosts},
    }


if "--host" in sys.argv:
    print("{}")
elif path.exists():
    print(json.dumps(to_script_format(json.loads(path.read_text()))))
else:
    print(json.dumps({"_meta": {"hostvars": {}}}))
