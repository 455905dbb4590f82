# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)
"""What a node offers to Walle: CPU, memory, disk, GPUs and its placement labels.

Pure parsers (nvidia-smi CSV, /proc/devices, /proc/driver/nvidia information files) plus one
gatherer that takes its I/O as arguments. Stdlib only (psutil when importable), so the same
code runs inside the walle_facts module and standalone (tests/gpu/check_gpu_discovery.py) on a
machine without Ansible.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess

try:
    import psutil
except ImportError:  # the standalone check may run where psutil is not installed
    psutil = None

NVIDIA_SMI_QUERY = "index,name,memory.total,uuid,pci.bus_id"
NODE_FILE = "/etc/walle/node.json"
# Control nodes every CUDA process opens besides its own /dev/nvidiaN.
NVIDIA_CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
_GPU_NODE = re.compile(r"^/dev/nvidia(\d+)$")
_LABEL_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


# ------------------------------------------------------------------------------- parsers

def parse_nvidia_smi(text: str) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total,uuid[,pci.bus_id]
    --format=csv,noheader,nounits` as {index, name, memory_mib, uuid[, pci_bus_id]}."""
    gpus = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4:
            raise ValueError(f"nvidia-smi line {number}: expected index, name, memory.total, "
                             f"uuid; got {line!r}")
        gpu = {"index": int(fields[0]), "name": fields[1],
               "memory_mib": _int_or_none(fields[2]), "uuid": fields[3]}
        if len(fields) > 4:
            gpu["pci_bus_id"] = normalize_pci_address(fields[4])
        gpus.append(gpu)
    return sorted(gpus, key=lambda g: g["index"])


def _int_or_none(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:  # "[N/A]"
        return None


def normalize_pci_address(text: str) -> str:
    """nvidia-smi says 00000000:19:00.0, /proc/driver/nvidia says 0000:19:00.0."""
    domain, _colon, rest = text.strip().lower().partition(":")
    if not rest:
        return text.strip().lower()
    return f"{int(domain, 16):04x}:{rest}"


def parse_nvidia_information(text: str) -> dict[str, str]:
    """/proc/driver/nvidia/gpus/<pci>/information: 'Key:  value' lines."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def parse_proc_devices(text: str) -> dict[str, dict[str, int]]:
    """/proc/devices as {"char": {name: major}, "block": {name: major}}."""
    table: dict[str, dict[str, int]] = {"char": {}, "block": {}}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Character devices"):
            section = "char"
        elif line.startswith("Block devices"):
            section = "block"
        elif line and section:
            major, _space, name = line.partition(" ")
            if major.isdigit() and name:
                table[section].setdefault(name.strip(), int(major))
    return table


def nvidia_device_groups(devices: dict[str, dict[str, int]]) -> dict[str, int]:
    """The NVIDIA char-device groups ({name: major}) usable as DeviceAllow=char-<name>."""
    return {name: major for name, major in sorted(devices["char"].items())
            if name.startswith("nvidia")}


def gpus_from_device_nodes(paths: list[str]) -> list[dict]:
    """GPUs when nvidia-smi is absent: one per /dev/nvidiaN, index N, the rest unknown."""
    minors = sorted(int(m.group(1)) for m in map(_GPU_NODE.match, paths) if m)
    return [{"index": n, "name": None, "memory_mib": None, "uuid": None,
             "device": f"/dev/nvidia{n}"} for n in minors]


def attach_device_nodes(gpus: list[dict], minors_by_pci: dict[str, int]) -> list[dict]:
    """Give each GPU its /dev/nvidia<minor>: the driver's minor when known (it need not equal
    the nvidia-smi index), else the index."""
    out = []
    for gpu in gpus:
        gpu = dict(gpu)
        minor = minors_by_pci.get(gpu.pop("pci_bus_id", None), gpu["index"])
        gpu["device"] = f"/dev/nvidia{minor}"
        out.append(gpu)
    return out


def gpu_device_paths(gpus: list[dict], existing: set[str]) -> list[str]:
    """The device nodes a job using all these GPUs needs: each GPU plus the control nodes."""
    paths = [g["device"] for g in gpus]
    if gpus:
        paths += [p for p in NVIDIA_CONTROL_NODES if p in existing]
    return paths


def merge_placement(file_data: dict, options: dict) -> dict:
    """zone/rack/labels/datasets: options win over /etc/walle/node.json, labels merge."""
    merged = {}
    for key in ("zone", "rack"):
        value = options.get(key) if options.get(key) is not None else file_data.get(key)
        merged[key] = None if value is None else str(value)
    labels = {str(k): str(v) for k, v in (file_data.get("labels") or {}).items()}
    labels.update({str(k): str(v) for k, v in (options.get("labels") or {}).items()})
    for key in labels:
        if not _LABEL_KEY.match(key):
            raise ValueError(f"labels.{key}: label keys are lower-case letters, digits, "
                             "'.', '_' or '-'")
    merged["labels"] = dict(sorted(labels.items()))
    datasets = options.get("datasets")
    if datasets is None:
        datasets = file_data.get("datasets") or []
    merged["datasets"] = sorted({str(d) for d in datasets})
    return merged


# ------------------------------------------------------------------------------ gathering

def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def run_nvidia_smi(binary: str, timeout: float = 20.0) -> str | None:
    """stdout of the GPU query, None when it fails (no driver loaded, no GPU)."""
    try:
        proc = subprocess.run(
            [binary, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def nvidia_minors(proc_root: str = "/proc/driver/nvidia/gpus") -> dict[str, int]:
    minors = {}
    for path in sorted(glob.glob(os.path.join(proc_root, "*", "information"))):
        info = parse_nvidia_information(_read(path) or "")
        if info.get("Device Minor", "").isdigit():
            minors[normalize_pci_address(os.path.basename(os.path.dirname(path)))] = \
                int(info["Device Minor"])
    return minors


def discover_gpus(nvidia_smi: str | None, smi_output: str | None = None) -> dict:
    """GPUs, their device paths and the NVIDIA char-device groups of this machine."""
    existing = set(glob.glob("/dev/nvidia*"))
    output = smi_output if smi_output is not None else (
        run_nvidia_smi(nvidia_smi) if nvidia_smi else None)
    if output:
        gpus, source = attach_device_nodes(parse_nvidia_smi(output), nvidia_minors()), "nvidia-smi"
    else:
        gpus, source = gpus_from_device_nodes(sorted(existing)), "device-nodes"
    groups = nvidia_device_groups(parse_proc_devices(_read("/proc/devices") or ""))
    return {"gpus": gpus, "gpu_devices": gpu_device_paths(gpus, existing),
            "gpu_device_groups": [f"char-{name}" for name in groups],
            "gpu_device_majors": groups, "gpu_source": source if gpus else None}


def _existing_parent(path: str) -> str:
    for _level in range(path.count("/") + 1):
        if os.path.exists(path):
            return path
        path = os.path.dirname(path) or "/"
    return "/"


def host_resources(disk_path: str) -> dict:
    """CPU cores, memory and disk (bytes) and load, with psutil when present."""
    disk_at = _existing_parent(disk_path)
    usage = psutil.disk_usage(disk_at) if psutil else shutil.disk_usage(disk_at)
    memory = psutil.virtual_memory().total if psutil else _meminfo_total()
    return {"cpu": (psutil.cpu_count(logical=True) if psutil else os.cpu_count()) or 1,
            "memory": memory, "disk": usage.total, "disk_free": usage.free,
            "disk_path": disk_at, "load": [round(x, 2) for x in os.getloadavg()]}


def _meminfo_total() -> int:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def load_node_file(path: str = NODE_FILE) -> dict:
    text = _read(path)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); fix or remove the file") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with zone, rack, labels, datasets")
    return data


# Container runtimes a node can run, as labels (the scheduler's implicit constraint on jobs of
# that runtime, walle.core.feasibility.runtime_rule): the runtime's program is installed and
# the cgroup tree is v2 with the controllers a slice's limits need (a node on a hybrid
# hierarchy, such as a lab nspawn node, cannot enforce them).
RUNTIME_PROGRAMS = {"nspawn": "systemd-nspawn", "lxc": "lxc-start"}
NEEDED_CONTROLLERS = frozenset({"cpu", "memory", "pids"})
CGROUP_ROOT = "/sys/fs/cgroup"


def runtime_labels(cgroup_root: str = CGROUP_ROOT, which=shutil.which) -> dict[str, str]:
    """{"runtime_<kind>": "true"|"false"} for each container runtime."""
    try:
        with open(os.path.join(cgroup_root, "cgroup.controllers"), encoding="utf-8") as f:
            controllers = set(f.read().split())
    except OSError:  # no cgroup v2 root: a v1 or hybrid hierarchy
        controllers = set()
    limits = controllers >= NEEDED_CONTROLLERS
    return {f"runtime_{kind}": "true" if limits and which(program) else "false"
            for kind, program in sorted(RUNTIME_PROGRAMS.items())}


def gather_node(name: str, disk_path: str, options: dict, nvidia_smi: str | None,
                node_file: str = NODE_FILE, smi_output: str | None = None,
                runtimes: dict[str, str] | None = None) -> dict:
    """Everything walle_facts returns as ansible_facts.walle_node. nvidia-smi runs from
    `nvidia_smi` (a path) unless its output is given in `smi_output`. The runtime labels
    (`runtimes`, default: runtime_labels() measured here) are facts: they win over labels of
    the same name from the options or the node file."""
    node = {"name": name, **host_resources(disk_path), **discover_gpus(nvidia_smi, smi_output)}
    node.update(merge_placement(load_node_file(node_file), options))
    node["labels"] = dict(sorted({**node["labels"],
                                  **(runtimes if runtimes is not None
                                     else runtime_labels())}.items()))
    return node
