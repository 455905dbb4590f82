"""The modules' DOCUMENTATION / EXAMPLES / RETURN match their argument_spec, and render."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from walle.collection import ensure_collection

REPO = Path(__file__).resolve().parents[2]
MODULES = ("walle_slice", "walle_workload", "walle_facts", "walle_consul_service",
           "walle_image")


def module_source(name: str) -> dict:
    """DOCUMENTATION, EXAMPLES, RETURN and ARGUMENT_SPEC, read without importing the module."""
    tree = ast.parse((REPO / "plugins" / "modules" / f"{name}.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            if target in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
                found[target] = yaml.safe_load(ast.literal_eval(node.value))
            elif target == "ARGUMENT_SPEC":
                found[target] = _spec(node.value, tree)
    return found


def _spec(value: ast.expr, tree: ast.Module) -> dict:
    """Evaluate `dict(...)` literals (names refer to other module-level dict(...) literals)."""
    names = {n.targets[0].id: n.value for n in tree.body
             if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}

    def ev(node):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "dict":
            return {kw.arg: ev(kw.value) for kw in node.keywords}
        if isinstance(node, ast.Name):
            return ev(names[node.id])
        return ast.literal_eval(node)

    return ev(value)


def compare_options(doc: dict, spec: dict, where: str) -> None:
    assert set(doc) == set(spec), where
    for name, arg in spec.items():
        d = doc[name]
        assert d["type"] == arg["type"], f"{where}.{name}"
        assert d.get("choices") == arg.get("choices"), f"{where}.{name}"
        assert d.get("default") == arg.get("default"), f"{where}.{name}"
        assert bool(d.get("required")) == bool(arg.get("required")), f"{where}.{name}"
        assert d.get("elements") == arg.get("elements"), f"{where}.{name}"
        if "options" in arg:
            compare_options(d["suboptions"], arg["options"], f"{where}.{name}")


@pytest.mark.parametrize("name", MODULES)
def test_documentation_matches_argument_spec(name):
    src = module_source(name)
    doc = src["DOCUMENTATION"]
    assert doc["module"] == name
    assert {"check_mode", "diff_mode"} <= set(doc["attributes"])
    compare_options(doc["options"], src["ARGUMENT_SPEC"], name)


@pytest.mark.parametrize("name", MODULES)
def test_examples_use_only_documented_options(name):
    src = module_source(name)
    tasks = [t[name] for t in src["EXAMPLES"] if name in t]
    assert tasks, "at least one example of the module itself"
    for task in tasks:
        assert set(task) <= set(src["ARGUMENT_SPEC"]), task


@pytest.mark.parametrize("name", MODULES)
def test_ansible_doc_renders(name):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ensure_collection(REPO)))
    ansible_doc = Path(sys.executable).parent / "ansible-doc"
    proc = subprocess.run([str(ansible_doc), f"walle.pool.{name}"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr and name in proc.stdout
