"""Helpers of the vm tier: the Ansible driver for Walle's modules and readers of cgroup
files inside the VM. Every wait is bounded."""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from walle.adapters import runner
from walle.collection import ensure_collection
from walle.core.grants import grant_alone
from walle.lab import vm as walle_vm
from walle.lab.tiny_image import TINY_IMAGE_SCRIPT
from walle.service.params import instance_vars

VENV_BIN = Path(sys.executable).parent  # ansible-playbook lives next to pytest's python
REPO = Path(__file__).resolve().parents[2]
FIGURES: dict[str, object] = {}  # measured figures, reported at the end of the session
VM_HOST = "walle-vm"  # the inventory's host name (walle.lab.vm.inventory_text)
VM_ADDRESS = "10.0.2.15"  # qemu user networking: the guest's own address
PLAYBOOK_TIMEOUT = 180  # seconds for one ansible run (each module call costs ~4 s under tcg)


@dataclass
class Walle:
    """Runs walle_* module tasks in the VM through ansible-runner, one play per call."""

    vm: walle_vm.VM

    def apply(self, *tasks: tuple[str, dict]) -> list[dict]:
        """Run (module, args) tasks in order; return each module's result; raise on failure."""
        import ansible_runner  # imported here: the unit tier does not need it

        _venv_on_path()

        play = [{"hosts": "vm", "gather_facts": False,
                 "tasks": [{"name": f"task{i}", f"walle.pool.{module}": args}
                           for i, (module, args) in enumerate(tasks)]}]
        with tempfile.TemporaryDirectory(prefix="walle-vm-ansible-") as data:
            playbook = Path(data) / "play.yml"
            playbook.write_text(yaml.safe_dump(play, sort_keys=False))
            run = ansible_runner.run(
                private_data_dir=data, playbook=str(playbook),
                inventory=str(self.vm.inventory_path), quiet=True, timeout=PLAYBOOK_TIMEOUT,
                envvars=_ansible_env(self.vm.workdir / "ansible-cp"))
            results = _task_results(run.events)
            failed = [r for r in results.values() if r.get("failed")]
            if run.rc != 0 or failed or len(results) != len(tasks):
                raise AssertionError(f"ansible run failed (rc={run.rc}, status={run.status}): "
                                     f"{failed or run.stdout.read()[-3000:]}")
        return [results[f"task{i}"] for i in range(len(tasks))]


def _venv_on_path() -> None:
    """ansible-runner looks ansible-playbook up on this process's PATH: make it the venv's."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    if str(VENV_BIN) not in path.split(":"):
        os.environ["PATH"] = f"{VENV_BIN}:{path}"


def _ansible_env(control_dir: Path) -> dict[str, str]:
    return {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(ensure_collection(REPO)),  # the repo is walle.pool
        # One SSH master per VM, reused by every run (a handshake costs seconds under tcg);
        # it ends when the VM powers off, and ControlPersist bounds it anyway.
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=120s",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
        "ANSIBLE_TIMEOUT": "30",
    }


def _task_results(events) -> dict[str, dict]:
    results = {}
    for event in events:
        if event.get("event") in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            data = event["event_data"]
            res = dict(data.get("res") or {})
            if event["event"] != "runner_on_ok":
                res["failed"] = True
            results[data["task"]] = res
    return results


# ---- helpers used by the tests ---------------------------------------------------------------

def cgroup_dir(vm: walle_vm.VM, unit: str) -> str:
    group = vm.run(f"systemctl show -P ControlGroup {shlex.quote(unit)}", check=True)
    path = group.stdout.strip()
    assert path, f"{unit} has no cgroup (is it active?)"
    return "/sys/fs/cgroup" + path


def read_files(vm: walle_vm.VM, folder: str, names: list[str]) -> dict[str, str]:
    """The contents of several files of one folder, in one SSH round trip."""
    script = "; ".join(f"printf '%s\\0' \"$(cat {shlex.quote(folder + '/' + n)})\""
                       for n in names)
    values = vm.run(script, check=True).stdout.split("\0")
    return dict(zip(names, values, strict=False))


def flat_keyed(text: str) -> dict[str, int]:
    """A cgroup 'key value' file (memory.events, cpu.stat, pids.events) as a dict."""
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}


def show(vm: walle_vm.VM, unit: str, *props: str) -> dict[str, str]:
    out = vm.run(f"systemctl show {shlex.quote(unit)} -p {','.join(props)}", check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll `predicate` until it returns a truthy value, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def cpu_fractions(vm: walle_vm.VM, folders: list[str], seconds: float) -> dict[str, float]:
    """CPUs used by each cgroup over `seconds`, from cpu.stat usage_usec deltas and elapsed
    time both measured inside the VM (so SSH latency does not enter the figure)."""
    reads = " ".join(f"$(awk '/^usage_usec/{{print $2}}' {shlex.quote(f)}/cpu.stat)"
                     for f in folders)
    snap = f'echo "$(date +%s%N) {reads}"'
    out = vm.run(f"{snap}; sleep {seconds}; {snap}", check=True,
                 timeout=seconds + 30).stdout.split("\n")
    before, after = ([int(x) for x in line.split()] for line in out[:2])
    elapsed_usec = (after[0] - before[0]) / 1000
    return {f: (after[i + 1] - before[i + 1]) / elapsed_usec for i, f in enumerate(folders)}


# ---- placing instances with the real place.yml -----------------------------------------------

def place(vm, instances: list[dict], credentials: dict | None = None,
          timeout: int = 300) -> runner.RunResult:
    """The real place.yml on the VM, as the executor runs it (no Consul registration);
    `timeout` bounds the run (the host is shared: tcg under load is slow)."""
    extravars = {"walle_batch": {VM_HOST: instances}, "walle_register": False,
                 "walle_wait_active_s": 60}
    if credentials:
        extravars["walle_credentials"] = credentials
    result = runner.run_playbook("place.yml", str(vm.inventory_path), extravars, [VM_HOST],
                                 timeout=timeout)
    host = result.hosts.get(VM_HOST)
    assert result.status == "successful" and host and host.ok and not host.failed_instances, (
        result.status, host, result.output_tail[-2000:])
    return result


def instance(spec, slot: int = 0, image: dict | None = None,
             ports: dict[str, int] | None = None) -> dict:
    """The instance_vars of one instance placed alone on the VM (`ports`: its dynamic ports,
    as the scheduler would have assigned them)."""
    return instance_vars(spec, slot, VM_ADDRESS, grant_alone(spec.resources), image=image,
                         ports=ports)


def stop(vm, *units: str) -> None:
    names = " ".join(shlex.quote(u) for u in units)
    vm.run(f"systemctl stop {names}; systemctl reset-failed {names}", timeout=120)


def make_tiny_image(vm, root: str, programs: list[str]) -> None:
    vm.write_file("/root/tiny-image.sh", TINY_IMAGE_SCRIPT)
    vm.run(f"sh /root/tiny-image.sh {shlex.quote(root)} "
           + " ".join(shlex.quote(p) for p in programs), timeout=120, check=True)
