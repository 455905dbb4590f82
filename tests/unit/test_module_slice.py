"""walle_slice run in-process with a fake systemctl: exact commands, check mode, diff."""

from __future__ import annotations

import pytest
from module_harness import load_module, prepare_node, run

walle_slice = load_module("walle_slice")


class FakeSystemctl:
    """Answers `systemctl show` from a table, records every command run."""

    def __init__(self, active=(), analyze="/usr/bin/systemd-analyze", rcs=None):
        self.active = set(active)
        self.analyze = analyze
        self.rcs = rcs or {}
        self.calls: list[list[str]] = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return {"systemctl": "/bin/systemctl", "systemd-analyze": self.analyze}.get(name)

    def run_command(self, argv, **_kw):
        self.calls.append(list(argv))
        if argv[1] == "show":
            state = "active" if argv[2] in self.active else "inactive"
            return 0, f"ActiveState={state}\nMainPID={4242 if state == 'active' else 0}\n", ""
        return self.rcs.get(argv[1], 0), "", "boom" if self.rcs.get(argv[1]) else ""

    def mutating(self) -> list[list[str]]:
        return [c for c in self.calls if c[1] != "show"]


@pytest.fixture
def node(tmp_path, monkeypatch):
    return prepare_node(tmp_path, monkeypatch)


@pytest.fixture
def slice_run(node, monkeypatch):
    def call(fake, args, **kw):
        return run(node, fake, walle_slice, args, monkeypatch=monkeypatch, **kw)
    return call


ARGS = dict(name="walle-web-0.slice", cpu_weight=100, memory_max="1G",
            device_allow=["/dev/nvidia0 rw"])
SC = "/bin/systemctl"


def test_create_writes_verifies_and_reloads_once(node, slice_run):
    fake = FakeSystemctl()
    kind, result = slice_run(fake, ARGS)
    assert kind == "exit" and result["changed"]
    path = node / "etc" / "walle-web-0.slice"
    assert "CPUWeight=100" in path.read_text()
    assert result["properties"] == {"CPUWeight": "100", "MemoryMax": "1G",
                                    "DeviceAllow": ["/dev/nvidia0 rw"]}
    assert fake.mutating()[0][:3] == ["/usr/bin/systemd-analyze", "verify", "--man=no"]
    assert fake.mutating()[1:] == [[SC, "daemon-reload"]]
    assert result["applied_live"] == []
    assert result["diff"]["before"] == "" and "MemoryMax=1G" in result["diff"]["after"]


def test_second_run_changes_nothing_and_runs_nothing(slice_run):
    slice_run(FakeSystemctl(), ARGS)
    fake = FakeSystemctl(active={"walle-web-0.slice"})
    kind, result = slice_run(fake, ARGS)
    assert not result["changed"] and "diff" not in result
    assert fake.mutating() == []


def test_change_on_an_active_slice_sets_only_the_changed_properties_live(node, slice_run):
    slice_run(FakeSystemctl(), ARGS)
    fake = FakeSystemctl(active={"walle-web-0.slice"})
    kind, result = slice_run(fake, {**ARGS, "cpu_weight": 300,
                                    "device_allow": ["/dev/nvidia0 rw", "char-nvidia-uvm rw"]})
    assert result["changed"] and result["applied_live"] == ["CPUWeight", "DeviceAllow"]
    assert fake.mutating()[1:] == [
        [SC, "daemon-reload"],
        [SC, "set-property", "--runtime", "walle-web-0.slice", "CPUWeight=300", "DeviceAllow=",
         "DeviceAllow=/dev/nvidia0 rw", "DeviceAllow=char-nvidia-uvm rw"]]
    assert "CPUWeight=300" in (node / "etc" / "walle-web-0.slice").read_text()
    assert "CPUWeight=100" in result["diff"]["before"]


def test_removed_property_is_reset_live(slice_run):
    slice_run(FakeSystemctl(), ARGS)
    fake = FakeSystemctl(active={"walle-web-0.slice"})
    _, result = slice_run(fake, {k: v for k, v in ARGS.items() if k != "memory_max"})
    assert fake.mutating()[-1] == [SC, "set-property", "--runtime", "walle-web-0.slice",
                                   "MemoryMax=infinity"]


def test_change_on_an_inactive_slice_clears_stale_runtime_properties(node, slice_run):
    slice_run(FakeSystemctl(), ARGS)
    stale = node / "run" / "walle-web-0.slice.d"
    stale.mkdir(parents=True)
    (stale / "50-CPUWeight.conf").write_text("[Slice]\nCPUWeight=100\n")
    fake = FakeSystemctl()
    _, result = slice_run(fake, {**ARGS, "cpu_weight": 300})
    assert result["applied_live"] == [] and not stale.exists()
    assert fake.mutating()[1:] == [[SC, "daemon-reload"]]


def test_check_mode_writes_nothing_and_runs_only_show(node, slice_run):
    fake = FakeSystemctl(active={"walle-web-0.slice"})
    _, result = slice_run(fake, ARGS, check=True)
    assert result["changed"] and "CPUWeight=100" in result["diff"]["after"]
    assert fake.mutating() == [] and not (node / "etc" / "walle-web-0.slice").exists()


def test_check_mode_reports_what_would_apply_live(slice_run):
    slice_run(FakeSystemctl(), ARGS)
    fake = FakeSystemctl(active={"walle-web-0.slice"})
    _, result = slice_run(fake, {**ARGS, "cpu_weight": 5}, check=True)
    assert result["applied_live"] == ["CPUWeight"] and fake.mutating() == []


def test_absent_stops_removes_and_reloads(node, slice_run):
    slice_run(FakeSystemctl(), ARGS)
    fake = FakeSystemctl(active={"walle-web-0.slice"})
    _, result = slice_run(fake, {"name": "walle-web-0.slice", "state": "absent"})
    assert result["changed"] and result["diff"]["after"] == ""
    assert fake.mutating() == [[SC, "stop", "walle-web-0.slice"], [SC, "daemon-reload"]]
    assert not (node / "etc" / "walle-web-0.slice").exists()
    fake = FakeSystemctl()
    _, again = slice_run(fake, {"name": "walle-web-0.slice", "state": "absent"})
    assert not again["changed"] and fake.mutating() == []


def test_no_verify_without_systemd_analyze(slice_run):
    fake = FakeSystemctl(analyze=None)
    slice_run(fake, ARGS)
    assert fake.mutating() == [[SC, "daemon-reload"]]


def test_verify_failure_fails_without_installing(node, slice_run):
    fake = FakeSystemctl(rcs={"verify": 1})
    kind, result = slice_run(fake, ARGS)
    assert kind == "fail" and "systemd-analyze verify" in result["msg"]
    assert not (node / "etc" / "walle-web-0.slice").exists()


@pytest.mark.parametrize(("args", "option"), [
    ({"name": "system.slice"}, "name"),
    ({"name": "walle-a.slice", "memory_max": "lots"}, "memory_max"),
    ({"name": "walle-a.slice", "device_allow": ["/dev/nvidia0 rw\nCPUWeight=1"]},
     "device_allow"),
    ({"name": "walle-a.slice", "cpu_weight": 0}, "cpu_weight"),
])
def test_bad_options_fail_naming_the_option(slice_run, args, option):
    fake = FakeSystemctl()
    kind, result = slice_run(fake, args)
    assert kind == "fail" and result["option"] == option and result["msg"].startswith(option)
    assert fake.calls == []

