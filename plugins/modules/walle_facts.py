#!/usr/bin/python
# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: walle_facts
short_description: Gather what a node offers to Walle (CPU, memory, disk, GPUs, labels)
version_added: "0.1.0"
description:
  - Reads the node's resources with psutil (logical CPUs, total memory, the size of the file
    system holding O(disk_path), load averages).
  - Finds GPUs with C(nvidia-smi --query-gpu=index,name,memory.total,uuid,pci.bus_id
    --format=csv,noheader,nounits) when that binary works, else from the C(/dev/nvidia[0-9]*)
    device nodes; each GPU gets its device node (the driver's minor number from
    C(/proc/driver/nvidia/gpus/*/information) when known).
  - Lists the NVIDIA char-device groups of C(/proc/devices) (V(char-nvidia),
    V(char-nvidia-uvm) ...) for C(DeviceAllow=) in walle_slice.
  - Placement attributes (zone, rack, labels, datasets) come from the options, merged over
    O(node_file) when it exists (options win; labels merge key by key).
  - The labels V(runtime_nspawn) and V(runtime_lxc) (V(true) or V(false)) say which
    container runtimes the node can run with enforced limits (its root cgroup is v2 with the
    cpu, memory and pids controllers, and C(systemd-nspawn) or C(lxc-start) is installed);
    they are measured, and win over labels of the same name from the options or the file.
  - Never changes anything.
options:
  name:
    description: The node name. Default the short host name of the machine.
    type: str
  disk_path:
    description: The path whose file system is the node's disk for Walle (its nearest existing
      parent is measured).
    type: path
    default: /var/lib/walle
  zone:
    description: The failure zone of the node.
    type: str
  rack:
    description: The rack of the node.
    type: str
  labels:
    description: Free labels (lower-case keys) used by job constraints C(label.<key>).
    type: dict
    default: {}
  datasets:
    description: Names of the datasets held on the node. Replaces the file's list when given.
    type: list
    elements: str
  node_file:
    description: A JSON object with C(zone), C(rack), C(labels), C(datasets).
    type: path
    default: /etc/walle/node.json
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same in check mode.
  diff_mode:
    support: none
    description: Returns no diff; it changes nothing.
  facts:
    support: full
    description: Sets C(ansible_facts.walle_node).
  platform:
    support: full
    platforms: posix
    description: Runs on the node (Linux with systemd), not on the controller.
seealso:
  - module: walle.pool.walle_slice
  - module: walle.pool.walle_workload
author:
  - Walle authors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Gather the node's Walle resources
  walle_facts:
    zone: z1
    rack: r7
    labels: {ssd: "true"}

- name: Use them
  ansible.builtin.debug:
    msg: "{{ ansible_facts.walle_node.gpus | length }} GPUs"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: complex
  contains:
    walle_node:
      description:
        - The node as Walle sees it. Keys C(name), C(cpu) (logical cores), C(memory) and
          C(disk) (bytes), C(disk_free), C(disk_path), C(load) (1, 5, 15 minutes), C(gpus)
          (list of C(index), C(name), C(memory_mib), C(uuid), C(device)), C(gpu_devices)
          (device paths including the control nodes), C(gpu_device_groups) (V(char-<name>)),
          C(gpu_device_majors), C(gpu_source) (V(nvidia-smi), V(device-nodes) or null),
          C(zone), C(rack), C(labels), C(datasets).
      returned: always
      type: dict
      sample:
        name: node1
        cpu: 16
        memory: 134217728000
        disk: 500107862016
        gpus:
          - {index: 0, name: NVIDIA H200, memory_mib: 143771, uuid: GPU-5d1c,
             device: /dev/nvidia0}
        gpu_devices: [/dev/nvidia0, /dev/nvidiactl, /dev/nvidia-uvm, /dev/nvidia-uvm-tools]
        gpu_device_groups: [char-nvidia, char-nvidia-uvm, char-nvidiactl]
        zone: z1
        rack: r7
        labels: {ssd: "true"}
        datasets: [imagenet]
"""

import socket  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.walle.pool.plugins.module_utils.walle_node import (  # noqa: E402
    NVIDIA_SMI_QUERY,
    gather_node,
)

ARGUMENT_SPEC = dict(
    name=dict(type="str"),
    disk_path=dict(type="path", default="/var/lib/walle"),
    zone=dict(type="str"),
    rack=dict(type="str"),
    labels=dict(type="dict", default={}),
    datasets=dict(type="list", elements="str"),
    node_file=dict(type="path", default="/etc/walle/node.json"),
)


def smi_output(module) -> str:
    """The GPU query's stdout, or "" when nvidia-smi is missing or fails (no driver)."""
    binary = module.get_bin_path("nvidia-smi")
    if not binary:
        return ""
    rc, out, _err = module.run_command(
        [binary, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"])
    return out if rc == 0 else ""


def run_module(module) -> dict:
    params = module.params
    name = params["name"] or socket.gethostname().split(".")[0]
    options = {k: params[k] for k in ("zone", "rack", "labels", "datasets")}
    node = gather_node(name, params["disk_path"], options, nvidia_smi=None,
                       node_file=params["node_file"], smi_output=smi_output(module))
    return dict(changed=False, ansible_facts=dict(walle_node=node))


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = run_module(module)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
