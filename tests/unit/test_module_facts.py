"""walle_facts: GPU and /proc parsing from text read off a real H200 machine, and merging."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "plugins" / "module_utils" / "walle_node.py"
_SPEC = importlib.util.spec_from_file_location("walle_node_under_test", _PATH)
wn = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(wn)

# Read off the H200 machine (see /work/shared/reference/machines.md), 2026-11-26.
H200_SMI = "0, NVIDIA H200, 143771, GPU-6acf13c5-a062-4c55-9c2d-cea54cb19851, 00000000:00:06.0\n"
H200_INFORMATION = (
    "Model: \t\t NVIDIA H200\nIRQ:   \t\t 41\n"
    "GPU UUID: \t GPU-6acf13c5-a062-4c55-9c2d-cea54cb19851\nVideo BIOS: \t 96.00.a5.00.1a\n"
    "Bus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\n"
    "Bus Location: \t 0000:00:06.0\nDevice Minor: \t 0\nGPU Firmware: \t 580.159.04\n"
    "GPU Excluded:\t No\n")
H200_PROC_DEVICES = """Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
 10 misc
136 pts
195 nvidia
195 nvidiactl
203 cpu/cpuid
231 infiniband_mad
238 nvidia-uvm
239 nvidia-nvswitch
240 nvidia-nvlink
241 nvidia-caps
242 nvidia-caps-imex-channels
243 hidraw
254 ndctl

Block devices:
  7 loop
253 zram
254 virtblk
259 blkext
"""
FOUR_GPUS = """0, NVIDIA A100-SXM4-40GB, 40960, GPU-aaaa, 00000000:07:00.0
1, NVIDIA A100-SXM4-40GB, 40960, GPU-bbbb, 00000000:0F:00.0
3, NVIDIA A100-SXM4-40GB, [N/A], GPU-dddd, 00000000:87:00.0
2, NVIDIA A100-SXM4-40GB, 40960, GPU-cccc, 00000000:47:00.0
"""


def test_h200_nvidia_smi_row():
    (gpu,) = wn.parse_nvidia_smi(H200_SMI)
    assert gpu == {"index": 0, "name": "NVIDIA H200", "memory_mib": 143771,
                   "uuid": "GPU-6acf13c5-a062-4c55-9c2d-cea54cb19851",
                   "pci_bus_id": "0000:00:06.0"}


def test_rows_are_sorted_by_index_and_unknown_memory_is_none():
    gpus = wn.parse_nvidia_smi(FOUR_GPUS)
    assert [g["index"] for g in gpus] == [0, 1, 2, 3]
    assert gpus[3]["memory_mib"] is None and gpus[3]["pci_bus_id"] == "0000:87:00.0"


def test_the_query_without_bus_id_still_parses():
    (gpu,) = wn.parse_nvidia_smi("0, NVIDIA H200, 143771, GPU-x\n")
    assert "pci_bus_id" not in gpu and gpu["memory_mib"] == 143771


def test_a_short_row_is_an_error_naming_the_line():
    with pytest.raises(ValueError, match="line 2"):
        wn.parse_nvidia_smi("0, A, 1, GPU-a\nNo devices were found\n")


def test_device_minor_comes_from_the_driver_not_the_index():
    info = wn.parse_nvidia_information(H200_INFORMATION)
    assert info["Device Minor"] == "0" and info["Bus Location"] == "0000:00:06.0"
    gpus = wn.parse_nvidia_smi(FOUR_GPUS)
    minors = {"0000:07:00.0": 3, "0000:0f:00.0": 2, "0000:47:00.0": 1}
    devices = [g["device"] for g in wn.attach_device_nodes(gpus, minors)]
    assert devices == ["/dev/nvidia3", "/dev/nvidia2", "/dev/nvidia1", "/dev/nvidia3"]


def test_proc_devices_groups_for_device_allow():
    table = wn.parse_proc_devices(H200_PROC_DEVICES)
    assert table["block"]["virtblk"] == 254 and table["char"]["tty"] == 4
    assert wn.nvidia_device_groups(table) == {
        "nvidia": 195, "nvidia-caps": 241, "nvidia-caps-imex-channels": 242,
        "nvidia-nvlink": 240, "nvidia-nvswitch": 239, "nvidia-uvm": 238, "nvidiactl": 195}


def test_gpus_from_device_nodes_when_nvidia_smi_is_missing():
    paths = ["/dev/nvidia-uvm", "/dev/nvidia10", "/dev/nvidia1", "/dev/nvidiactl",
             "/dev/nvidia-caps"]
    gpus = wn.gpus_from_device_nodes(paths)
    assert [(g["index"], g["device"]) for g in gpus] == [(1, "/dev/nvidia1"),
                                                        (10, "/dev/nvidia10")]
    assert wn.gpu_device_paths(gpus, set(paths)) == ["/dev/nvidia1", "/dev/nvidia10",
                                                    "/dev/nvidiactl", "/dev/nvidia-uvm"]


def test_no_gpu_no_control_nodes():
    assert wn.gpu_device_paths([], {"/dev/nvidiactl"}) == []


def test_options_win_over_the_node_file_and_labels_merge():
    file_data = {"zone": "z1", "rack": "r1", "labels": {"ssd": "true", "tier": "b"},
                 "datasets": ["imagenet", "c4"]}
    merged = wn.merge_placement(file_data, {"zone": "z2", "rack": None,
                                            "labels": {"tier": "a"}, "datasets": None})
    assert merged == {"zone": "z2", "rack": "r1", "labels": {"ssd": "true", "tier": "a"},
                      "datasets": ["c4", "imagenet"]}


def test_bad_label_key_is_refused():
    with pytest.raises(ValueError, match="labels.Bad Key"):
        wn.merge_placement({}, {"labels": {"Bad Key": "x"}})


def test_node_file_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "node.json"
    path.write_text("zone: z1")
    with pytest.raises(ValueError, match=str(path)):
        wn.load_node_file(str(path))


def test_gather_node_on_this_machine(tmp_path):
    (tmp_path / "node.json").write_text('{"zone": "z9", "datasets": ["d"]}')
    node = wn.gather_node("n1", str(tmp_path / "missing" / "dir"), {"rack": "r2"},
                          nvidia_smi=None, node_file=str(tmp_path / "node.json"),
                          smi_output=H200_SMI)
    assert node["cpu"] >= 1 and node["memory"] > 0 and node["disk"] >= node["disk_free"] > 0
    assert node["disk_path"] == str(tmp_path)
    assert (node["zone"], node["rack"], node["datasets"]) == ("z9", "r2", ["d"])
    assert [g["uuid"] for g in node["gpus"]] == ["GPU-6acf13c5-a062-4c55-9c2d-cea54cb19851"]
    assert node["gpu_source"] == "nvidia-smi"


def test_the_module_runs_nvidia_smi_through_run_command(tmp_path, monkeypatch):
    import sys

    from ansible.module_utils import basic
    from ansible.module_utils.testing import patch_module_args

    spec = importlib.util.spec_from_file_location(
        "walle_test_walle_facts", _PATH.parents[1] / "modules" / "walle_facts.py")
    walle_facts = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = walle_facts
    spec.loader.exec_module(walle_facts)

    calls = []

    class Done(Exception):
        pass

    def exit_json(_module, **kw):
        raise Done(kw)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path",
                        lambda _m, name, *a, **k: "/usr/bin/nvidia-smi" if name == "nvidia-smi"
                        else None)
    monkeypatch.setattr(basic.AnsibleModule, "run_command",
                        lambda _m, argv, **k: calls.append(argv) or (0, H200_SMI, ""))
    args = {"name": "n1", "zone": "z1", "disk_path": str(tmp_path),
            "node_file": str(tmp_path / "none.json"), "_ansible_check_mode": True}
    with patch_module_args(args), pytest.raises(Done) as done:
        walle_facts.main()
    result = done.value.args[0]
    assert calls == [["/usr/bin/nvidia-smi", f"--query-gpu={wn.NVIDIA_SMI_QUERY}",
                      "--format=csv,noheader,nounits"]]
    assert result["changed"] is False
    node = result["ansible_facts"]["walle_node"]
    assert (node["name"], node["zone"], node["gpus"][0]["memory_mib"]) == ("n1", "z1", 143771)
