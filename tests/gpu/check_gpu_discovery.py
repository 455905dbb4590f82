#!/usr/bin/env python3
"""Run walle_facts' discovery standalone (no Ansible) and print the node as JSON.

For a machine with GPUs: `python3 tests/gpu/check_gpu_discovery.py [--disk-path P]`.
Exits 1 when --expect-gpus N is given and a different number of GPUs is found, or when a
GPU's device node does not exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_PY = os.path.join(HERE, "..", "..", "plugins", "module_utils", "walle_node.py")


def load_walle_node():
    spec = importlib.util.spec_from_file_location("walle_node", NODE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-path", default="/var/lib/walle")
    parser.add_argument("--expect-gpus", type=int, default=None)
    args = parser.parse_args(argv)
    walle_node = load_walle_node()
    node = walle_node.gather_node(socket.gethostname().split(".")[0], args.disk_path, {},
                                  nvidia_smi=shutil.which("nvidia-smi"), node_file="/nonexistent")
    node["psutil"] = walle_node.psutil is not None
    print(json.dumps(node, indent=2, sort_keys=True))
    problems = [f"{g['device']} does not exist" for g in node["gpus"]
                if not os.path.exists(g["device"])]
    if args.expect_gpus is not None and len(node["gpus"]) != args.expect_gpus:
        problems.append(f"expected {args.expect_gpus} GPUs, found {len(node['gpus'])}")
    for problem in problems:
        print(f"check_gpu_discovery: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
