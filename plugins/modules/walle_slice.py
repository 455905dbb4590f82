#!/usr/bin/python
# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: walle_slice
short_description: Manage a Walle systemd slice and apply its resource limits live
version_added: "0.1.0"
description:
  - Writes C(/etc/systemd/system/<name>), a slice unit under C(walle.slice) holding the
    resource directives of one Walle job or instance.
  - When the file changes and the slice is active, only the changed properties are applied
    live with C(systemctl set-property --runtime), so nothing running in the slice restarts.
  - The file is validated with C(systemd-analyze verify) when that binary exists on the node,
    written atomically, and C(systemctl daemon-reload) runs only when it changed.
  - Sizes accept bytes (an integer) or systemd size strings (V(512M), V(2G), V(50%),
    V(infinity)); K, M, G and T are base 1024.
options:
  name:
    description:
      - The slice unit, V(walle.slice) or V(walle-<part>[-<part>...].slice), for example
        V(walle-web-0.slice). Dashes nest it (V(walle-web-0.slice) sits in V(walle-web.slice)).
    type: str
    required: true
  state:
    description:
      - V(present) writes the unit and applies changed properties live.
      - V(absent) stops the slice if active (and so anything still running in it), removes
        the unit file and its runtime property drop-ins, and reloads systemd.
    type: str
    choices: [present, absent]
    default: present
  description:
    description: C(Description=) of the slice. Default V(Walle slice <name>).
    type: str
  cpu_weight:
    description: C(CPUWeight=), 1..10000 (kernel default 100).
    type: int
  cpu_quota:
    description: C(CPUQuota=) in percent of one CPU; V(250) means 2.5 CPUs.
    type: int
  allowed_cpus:
    description: C(AllowedCPUs=), a CPU list such as V(0-3,8).
    type: str
  memory_min:
    description: C(MemoryMin=), memory guaranteed to the slice.
    type: raw
  memory_low:
    description: C(MemoryLow=), best-effort memory protection.
    type: raw
  memory_high:
    description: C(MemoryHigh=), the throttling limit.
    type: raw
  memory_max:
    description: C(MemoryMax=), the hard limit (OOM kill inside the slice).
    type: raw
  io_weight:
    description: C(IOWeight=), 1..10000.
    type: int
  io_read_bandwidth_max:
    description: C(IOReadBandwidthMax=) entries, one per block device.
    type: list
    elements: dict
    suboptions:
      device:
        description: A block device path, for example V(/dev/vda).
        type: str
        required: true
      rate:
        description: Bytes per second (an integer or a size string such as V(10M)).
        type: raw
        required: true
  io_write_bandwidth_max:
    description: C(IOWriteBandwidthMax=) entries, one per block device.
    type: list
    elements: dict
    suboptions:
      device:
        description: A block device path, for example V(/dev/vda).
        type: str
        required: true
      rate:
        description: Bytes per second (an integer or a size string such as V(10M)).
        type: raw
        required: true
  tasks_max:
    description: C(TasksMax=), a positive integer or V(infinity).
    type: raw
  device_policy:
    description: C(DevicePolicy=). V(closed) allows only the standard pseudo devices plus
      O(device_allow).
    type: str
    choices: [auto, closed, strict]
  device_allow:
    description:
      - C(DeviceAllow=) entries such as V(/dev/nvidia0 rw) or V(char-nvidia-uvm rw) (names
        from C(/proc/devices), see the walle_facts module).
    type: list
    elements: str
attributes:
  check_mode:
    support: full
    description: Reports what would change; runs only read-only C(systemctl show).
  diff_mode:
    support: full
    description: The unit text before and after.
  platform:
    support: full
    platforms: posix
    description: Runs on the node (Linux with systemd), not on the controller.
notes:
  - Needs systemd as PID 1 on the node. Units inside the slice are never restarted.
  - Runtime properties live in C(/run/systemd/system.control/<name>.d); they are refreshed
    whenever a property changes, and cleared when the slice is inactive so the file rules.
seealso:
  - module: walle.pool.walle_workload
  - module: walle.pool.walle_facts
author:
  - Walle authors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: An instance slice with 2 guaranteed GiB, a 4 GiB ceiling and 1.5 CPUs
  walle_slice:
    name: walle-web-0.slice
    cpu_weight: 150
    cpu_quota: 150
    memory_min: 2G
    memory_max: 4G
    tasks_max: 512

- name: A GPU instance that may only see its own GPU
  walle_slice:
    name: walle-train-0.slice
    device_policy: closed
    device_allow:
      - /dev/nvidia0 rw
      - /dev/nvidiactl rw
      - char-nvidia-uvm rw

- name: Remove the slice once its workload is gone
  walle_slice:
    name: walle-web-0.slice
    state: absent
"""

RETURN = r"""
unit:
  description: The slice unit name.
  returned: always
  type: str
  sample: walle-web-0.slice
path:
  description: The unit file path.
  returned: always
  type: str
  sample: /etc/systemd/system/walle-web-0.slice
properties:
  description: The resource directives written; multi-valued ones as lists.
  returned: always
  type: dict
  sample: {"CPUWeight": "150", "MemoryMax": "4G", "DeviceAllow": ["/dev/nvidia0 rw"]}
applied_live:
  description: Directives applied with C(systemctl set-property --runtime) (or that would be,
    in check mode). Empty when the slice was inactive or nothing changed.
  returned: always
  type: list
  elements: str
  sample: ["CPUWeight"]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.walle.pool.plugins.module_utils.walle_systemd import (  # noqa: E402
    Systemd,
    run_and_exit,
    value_error,
)
from ansible_collections.walle.pool.plugins.module_utils.walle_units import (  # noqa: E402
    SLICE_PROPERTY_ORDER,
    parse_unit,
    render_slice,
    slice_properties,
)

_BANDWIDTH = dict(device=dict(type="str", required=True), rate=dict(type="raw", required=True))
ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    description=dict(type="str"),
    cpu_weight=dict(type="int"),
    cpu_quota=dict(type="int"),
    allowed_cpus=dict(type="str"),
    memory_min=dict(type="raw"),
    memory_low=dict(type="raw"),
    memory_high=dict(type="raw"),
    memory_max=dict(type="raw"),
    io_weight=dict(type="int"),
    io_read_bandwidth_max=dict(type="list", elements="dict", options=_BANDWIDTH),
    io_write_bandwidth_max=dict(type="list", elements="dict", options=_BANDWIDTH),
    tasks_max=dict(type="raw"),
    device_policy=dict(type="str", choices=["auto", "closed", "strict"]),
    device_allow=dict(type="list", elements="str"),
)
RESOURCE_OPTIONS = tuple(k for k in ARGUMENT_SPEC if k not in ("name", "state", "description"))
MULTI_VALUED = ("DeviceAllow", "IOReadBandwidthMax", "IOWriteBandwidthMax")
# What `systemctl set-property` needs to put a removed directive back to its default.
RESET_VALUES = {"DevicePolicy": "auto", "MemoryMin": "0", "MemoryLow": "0",
                "MemoryHigh": "infinity", "MemoryMax": "infinity", "TasksMax": "infinity"}


def _int_strings(value):
    """Sizes arrive as raw: keep ints, turn digit strings into ints (bytes)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def desired_resources(params: dict) -> dict:
    resources = {k: params[k] for k in RESOURCE_OPTIONS}
    for key in ("memory_min", "memory_low", "memory_high", "memory_max"):
        resources[key] = _int_strings(resources[key])
    return resources


def group_properties(pairs) -> dict:
    """(directive, value) pairs as {directive: value}, multi-valued directives as lists."""
    grouped: dict = {}
    for key, value in pairs:
        if key in MULTI_VALUED:
            grouped.setdefault(key, []).append(value)
        else:
            grouped[key] = value
    return grouped


def live_changes(old: dict, new: dict) -> list[str]:
    """`Prop=Val` arguments for set-property turning `old` properties into `new`, in a stable
    order; multi-valued directives are reset and then listed again."""
    args = []
    for key in SLICE_PROPERTY_ORDER:
        if old.get(key) == new.get(key):
            continue
        if key in MULTI_VALUED:
            args.append(f"{key}=")
            args += [f"{key}={value}" for value in new.get(key, [])]
        else:
            args.append(f"{key}={new[key]}" if key in new else f"{key}={RESET_VALUES.get(key, '')}")
    return args


def unit_properties(text: str | None) -> dict:
    if text is None:
        return {}
    return group_properties((k, v) for section, k, v in parse_unit(text) if section == "Slice")


def run_module(module: AnsibleModule, systemd: Systemd) -> dict:
    params = module.params
    name = params["name"]
    try:
        resources = desired_resources(params)
        desired = render_slice(name, description=params["description"], **resources)
        properties = group_properties(slice_properties(**resources))
    except ValueError as exc:
        raise value_error(exc) from exc
    current = systemd.read_unit(name)
    result = dict(changed=False, unit=name, path=systemd.unit_path(name),
                  properties=properties, applied_live=[])
    if params["state"] == "absent":
        desired = None
        result["properties"] = {}
    if current == desired:
        return result
    result["changed"] = True
    if module._diff:
        result["diff"] = dict(before_header=result["path"], after_header=result["path"],
                              before=current or "", after=desired or "")
    active = systemd.is_active(name)
    if desired is None:
        if not module.check_mode:
            remove_slice(systemd, name, active)
        return result
    changes = live_changes(unit_properties(current), properties) if active else []
    result["applied_live"] = sorted({arg.split("=", 1)[0] for arg in changes})
    if not module.check_mode:
        systemd.install_units({name: desired})
        if not active:
            systemd.clear_runtime_properties(name)
        systemd.daemon_reload()
        if changes:
            systemd.systemctl_run("set-property", "--runtime", name, *changes)
    return result


def remove_slice(systemd: Systemd, name: str, active: bool) -> None:
    if active:
        systemd.systemctl_run("stop", name)
    systemd.remove_unit(name)
    systemd.clear_runtime_properties(name)
    systemd.daemon_reload()


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_and_exit(module, run_module)


if __name__ == "__main__":
    main()
