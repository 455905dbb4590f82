# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)
"""The thin systemd adapter shared by walle_slice and walle_workload.

It runs systemctl / systemd-analyze through `module.run_command` (argv lists, binaries found
with `module.get_bin_path`), installs unit files atomically and raises WalleError; modules turn
that into one `fail_json` in their main(). Nothing here mutates the node in check mode: the
modules only call the mutating methods outside check mode.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ansible_collections.walle.pool.plugins.module_utils.walle_units import parse_systemctl_show

UNIT_DIR = "/etc/systemd/system"
# Where `systemctl set-property --runtime` keeps its drop-ins (systemd.resource-control(5)).
RUNTIME_CONTROL_DIR = "/run/systemd/system.control"
UNIT_MODE = 0o640  # unit files: root reads them (systemd); other users may not
ACTIVE_STATES = ("active", "activating", "reloading", "deactivating")


class WalleError(Exception):
    """A failure to report with fail_json; `option` names the module option at fault."""

    def __init__(self, msg: str, option: str | None = None, **details):
        super().__init__(msg)
        self.msg = msg
        self.option = option
        self.details = details


def run_and_exit(module, run_module) -> None:
    """The edge of a systemd module: run it, report a WalleError once with fail_json (naming
    the option at fault), else exit_json with its result."""
    try:
        result = run_module(module, Systemd(module))
    except WalleError as exc:
        extra = dict(exc.details)
        if exc.option:
            extra["option"] = exc.option
        module.fail_json(msg=exc.msg, **extra)
    module.exit_json(**result)


def value_error(exc: ValueError) -> WalleError:
    """walle_units raises 'field: reason'; keep the field as the option at fault."""
    text = str(exc)
    field = text.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
    return WalleError(text, option=field)


class Systemd:
    def __init__(self, module, unit_dir: str | None = None, control_dir: str | None = None):
        self.module = module
        self.unit_dir = unit_dir or UNIT_DIR
        self.control_dir = control_dir or RUNTIME_CONTROL_DIR
        self.systemctl = module.get_bin_path("systemctl")
        if not self.systemctl:
            raise WalleError("systemctl not found on the node: Walle needs systemd as PID 1")
        self.analyze = module.get_bin_path("systemd-analyze")  # optional: used to verify units

    # ------------------------------------------------------------------------------ reading
    def unit_path(self, unit: str) -> str:
        return os.path.join(self.unit_dir, unit)

    def read_unit(self, unit: str) -> str | None:
        try:
            with open(self.unit_path(unit), encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def show(self, unit: str, props: tuple[str, ...]) -> dict[str, str]:
        rc, out, err = self.module.run_command(
            [self.systemctl, "show", unit, "--property=" + ",".join(props)])
        if rc != 0:
            raise WalleError(f"systemctl show {unit} failed: {err.strip() or out.strip()}")
        return parse_systemctl_show(out)

    def list_units(self, pattern: str) -> dict[str, str]:
        """Loaded units matching a glob (`systemctl list-units --all PATTERN`): unit name ->
        ActiveState."""
        rc, out, err = self.module.run_command(
            [self.systemctl, "list-units", "--all", "--plain", "--no-legend", "--no-pager",
             pattern])
        if rc != 0:
            raise WalleError(f"systemctl list-units {pattern} failed: "
                             f"{err.strip() or out.strip()}")
        units = {}
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 3 and cols[1] == "loaded":
                units[cols[0]] = cols[2]
        return units

    def is_active(self, unit: str) -> bool:
        return self.show(unit, ("ActiveState",)).get("ActiveState") in ACTIVE_STATES

    # ------------------------------------------------------------------------------ acting
    def systemctl_run(self, *args: str) -> None:
        rc, out, err = self.module.run_command([self.systemctl, *args])
        if rc != 0:
            hint = ""
            if args and args[0] in ("start", "restart"):
                hint = f" (see: journalctl -u {args[-1]})"
            raise WalleError(f"systemctl {' '.join(args)} failed (rc={rc}): "
                             f"{err.strip() or out.strip()}{hint}")

    def daemon_reload(self) -> None:
        self.systemctl_run("daemon-reload")

    def install_units(self, texts: dict[str, str]) -> None:
        """Write the units to a temp dir, verify them together when systemd-analyze exists,
        then move each into place atomically."""
        staging = tempfile.mkdtemp(prefix="walle-units-", dir=self.module.tmpdir)
        try:
            paths = {}
            for unit, text in texts.items():
                paths[unit] = os.path.join(staging, unit)
                with open(paths[unit], "w", encoding="utf-8") as handle:
                    handle.write(text)
                # 0640: root (systemd) reads units; other users have no business there.
                os.chmod(paths[unit], UNIT_MODE)
            self._verify(list(paths.values()))
            os.makedirs(self.unit_dir, exist_ok=True)
            for unit, path in paths.items():
                self.module.atomic_move(path, self.unit_path(unit))
                # atomic_move keeps an old file's mode or applies the umask to a new one
                os.chmod(self.unit_path(unit), UNIT_MODE)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _verify(self, paths: list[str]) -> None:
        if not self.analyze:
            return
        rc, out, err = self.module.run_command([self.analyze, "verify", "--man=no", *paths])
        if rc != 0:
            raise WalleError(f"systemd-analyze verify rejected the unit: {err.strip() or out}",
                             units=[os.path.basename(p) for p in paths])

    def remove_unit(self, unit: str) -> bool:
        try:
            os.unlink(self.unit_path(unit))
        except FileNotFoundError:
            return False
        return True

    def clear_runtime_properties(self, unit: str) -> bool:
        """Drop `set-property --runtime` drop-ins, which would otherwise override the file."""
        path = os.path.join(self.control_dir, unit + ".d")
        if not os.path.isdir(path):
            return False
        shutil.rmtree(path)
        return True
