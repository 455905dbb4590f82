"""Running Walle's modules in-process for unit tests: load a module from plugins/modules,
point walle_systemd at a temp folder, turn exit_json/fail_json into an exception, and feed
run_command from a fake. Shared by the walle_slice and walle_workload tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.walle.pool.plugins.module_utils import walle_systemd

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"walle_test_{name}",
                                                  PLUGINS / "modules" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Exit(Exception):
    def __init__(self, kind: str, result: dict):
        super().__init__(kind)
        self.kind, self.result = kind, result


def prepare_node(tmp_path: Path, monkeypatch) -> Path:
    """A node in a temp folder: unit and runtime-control dirs, exit/fail raising Exit."""
    unit_dir, control_dir = tmp_path / "etc", tmp_path / "run"
    unit_dir.mkdir()
    monkeypatch.setattr(walle_systemd, "UNIT_DIR", str(unit_dir))
    monkeypatch.setattr(walle_systemd, "RUNTIME_CONTROL_DIR", str(control_dir))

    def exit_json(_module, **kw):
        raise Exit("exit", kw)

    def fail_json(_module, **kw):
        raise Exit("fail", kw)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    return tmp_path


def run(node_dir, fake, module, args: dict, check=False, diff=True,
        monkeypatch=None) -> tuple[str, dict]:
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path",
                        lambda _module, name, *a, **kw: fake.get_bin_path(name))
    monkeypatch.setattr(basic.AnsibleModule, "run_command",
                        lambda _module, argv, **kw: fake.run_command(argv))
    internal = dict(_ansible_check_mode=check, _ansible_diff=diff,
                    _ansible_remote_tmp=str(node_dir / "tmp"), _ansible_keep_remote_files=False)
    with patch_module_args({**args, **internal}), pytest.raises(Exit) as info:
        module.main()
    return info.value.kind, info.value.result
