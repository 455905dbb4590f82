"""The lxc runtime: the spec's field errors, walle_workload's unit for an lxc instance (run
in-process with a fake systemctl), and the fixed prepare/teardown scripts run for real on a
folder here (uid range, ownership shift, config, release)."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from module_harness import load_module, prepare_node, run

from walle.jobspec import SpecError, parse_spec
from walle.service.params import workload_args

walle_workload = load_module("walle_workload")
from ansible_collections.walle.pool.plugins.module_utils import walle_units as wu  # noqa: E402

LXC_START = "/usr/bin/lxc-start"
ROOT_ON_EXT4 = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
ROOT_ON_OVERLAY = ("22 1 0:40 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/l\n"
                   "25 22 0:22 / /run rw,nosuid shared:5 - tmpfs tmpfs rw\n")


# ------------------------------------------------------------------------------- the spec

def spec(runtime: dict, **extra):
    return parse_spec({"name": "boxed", "kind": "service", "count": 2,
                       "resources": {"cpu": 0.2, "memory": "64M"}, "runtime": runtime, **extra})


def problems(runtime: dict, **extra) -> str:
    with pytest.raises(SpecError) as info:
        spec(runtime, **extra)
    return str(info.value)


def test_an_lxc_job_names_an_image_of_the_store_and_a_command_inside_it():
    job = spec({"type": "lxc", "image": "tiny:1.0", "command": "/bin/sh", "args": ["-c", "x"],
                "env": {"K": "v"}, "working_dir": "/srv"})
    assert (job.runtime.kind, job.runtime.image, job.runtime.command) == \
        ("lxc", "tiny:1.0", "/bin/sh")
    args = workload_args(job, 0)
    assert (args["runtime"], args["command"], args["args"]) == ("lxc", "/bin/sh", ["-c", "x"])
    assert "expand_env" not in args and "device_allow" not in args


@pytest.mark.parametrize(("runtime", "extra", "field", "says"), [
    ({"type": "lxc", "command": "/bin/sh"}, {}, "runtime.image", "required for the lxc runtime"),
    ({"type": "lxc", "image": "tiny:1.0"}, {}, "runtime.command",
     "required for the lxc runtime"),
    ({"type": "lxc", "image": "/", "command": "/bin/sh"}, {}, "runtime.image", "no version"),
    ({"type": "lxc", "image": "/srv/rootfs:1", "command": "/bin/sh"}, {}, "runtime.image",
     "is not an image name"),
    ({"type": "lxc", "image": "tiny:1.0", "command": "/bin/sh", "privileged": True}, {},
     "runtime.privileged", "an lxc container is confined by its user namespace"),
    ({"type": "lxc", "image": "tiny:1.0", "command": "/bin/sh", "jit": True}, {},
     "runtime.jit", "only for the exec runtime"),
    ({"type": "lxc", "image": "tiny:1.0", "command": "/bin/sh",
      "capabilities": ["CAP_NET_ADMIN"]}, {}, "runtime.capabilities",
     "only for the exec runtime"),
    ({"type": "lxc", "image": "tiny:1.0", "command": "/bin/sh", "user": "app"}, {},
     "runtime.user", "not for the lxc runtime"),
    ({"type": "lxc", "image": "tiny:1.0", "command": "/bin/sh"},
     {"secrets": {"db": {"consul": "app/db"}}}, "secrets", "the lxc runtime cannot take them"),
    ({"type": "exec", "image": "tiny:1.0", "command": "/bin/sh"}, {}, "runtime.image",
     "only the container runtimes (nspawn, lxc) have an image"),
    ({"type": "lxd", "image": "tiny:1.0", "command": "/bin/sh"}, {}, "runtime.type", "lxc"),
])
def test_bad_lxc_specs_name_the_field_and_the_fix(runtime, extra, field, says):
    text = problems(runtime, **extra)
    assert f"{field}:" in text and says in text, text


# ------------------------------------------------------------------ the module's rendering

class Fake:
    """systemctl answering `show` (nothing active), the node's programs, every call kept."""

    def __init__(self, lxc_start: str | None = LXC_START):
        self.lxc_start = lxc_start
        self.calls: list[list[str]] = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return {"systemctl": "/bin/systemctl", "systemd-analyze": None,
                "lxc-start": self.lxc_start}.get(name)

    def run_command(self, argv, **_kw):
        self.calls.append(list(argv))
        if argv[1] == "show":
            return 0, "ActiveState=inactive\nMainPID=0\nInactiveExitTimestampMonotonic=0\n", ""
        return 0, "", ""

    def mutating(self) -> list[list[str]]:
        return [c for c in self.calls if c[1] != "show"]


@pytest.fixture
def node(tmp_path, monkeypatch):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(ROOT_ON_EXT4)
    monkeypatch.setattr(walle_workload, "MOUNTINFO", str(mountinfo))
    (tmp_path / "images" / "sha256-ab").mkdir(parents=True)
    return prepare_node(tmp_path, monkeypatch)


@pytest.fixture
def wl(node, monkeypatch):
    def call(args, fake=None, **kw):
        fake = fake or Fake()
        kind, result = run(node, fake, walle_workload, args, monkeypatch=monkeypatch, **kw)
        return kind, result, fake
    return call


def lxc_args(node, **extra) -> dict:
    return {"name": "walle-boxed-0", "slice": "walle-boxed-0.slice", "runtime": "lxc",
            "image": "sha256-ab", "image_store": str(node / "images"), "command": "/bin/sh",
            "args": ["-c", "echo $HOME 100%; exec sleep 9"], "env": {"GREETING": "a b $X"},
            "pre_stop": ["/bin/drain", "--now"], "stop_signal": "SIGINT", "stop_timeout": 12,
            **extra}


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for _section, key, value in wu.parse_unit(text):
        out.setdefault(key, []).append(value)
    return out


def test_an_lxc_instance_runs_lxc_start_in_the_foreground_in_its_slice(node, wl):
    kind, result, fake = wl(lxc_args(node))
    assert kind == "exit" and result["changed"], result
    unit = directives((node / "etc" / "walle-boxed-0.service").read_text())
    folder = "/var/lib/walle/lxc/walle-boxed-0"
    (start,) = unit["ExecStart"]
    assert wu.split_exec_words(start) == [
        LXC_START, "-F", "-n", "walle-boxed-0", "-P", f"{folder}/lxc",
        "-s", "lxc.environment=GREETING", "--", "/bin/sh", "-c",
        "echo $HOME 100%; exec sleep 9"]
    # the value reaches lxc-start's environment literally; lxc passes it on by name
    assert unit["Environment"] == ['"GREETING=a b $X"']
    assert unit["Slice"] == ["walle-boxed-0.slice"] and unit["Delegate"] == ["yes"]
    assert unit["KillMode"] == ["mixed"] and unit["KillSignal"] == ["SIGINT"]
    assert unit["TimeoutStopSec"] == ["12s"] and unit["Type"] == ["exec"]
    assert "DynamicUser" not in unit  # confinement is the container's user namespace
    # the hook runs inside the container through lxc-attach, with the job's environment only
    (stop,) = unit["ExecStop"]
    assert wu.split_exec_words(stop) == [
        "/usr/bin/lxc-attach", "-n", "walle-boxed-0", "-P", f"{folder}/lxc", "--clear-env",
        "--keep-var", "GREETING", "--", "/bin/drain", "--now"]
    # its own root: the overlay of the shared image, then the uid shift and the config
    setup, prepare = (wu.split_exec_words(v) for v in unit["ExecStartPre"])
    assert setup == ["/bin/sh", "-c", wu.NSPAWN_ROOT_SETUP, "walle-root", folder,
                     str(node / "images" / "sha256-ab")]
    assert prepare == [wu.LXC_PYTHON, "-c", wu.LXC_PREPARE_CODE, folder, "walle-boxed-0",
                       wu.LXC_IDS_DIR, str(wu.LXC_ID_FIRST), str(wu.LXC_ID_SIZE),
                       str(wu.LXC_ID_RANGES)]
    (post,) = unit["ExecStopPost"]
    assert post.startswith("-+") and wu.split_exec_words(post[2:]) == [
        "/bin/sh", "-c", wu.LXC_TEARDOWN, "walle-lxc", folder, wu.LXC_IDS_DIR]
    assert fake.mutating()[-1] == ["/bin/systemctl", "start", "walle-boxed-0.service"]


def test_the_lxc_config_is_fixed_text_unprivileged_on_the_nodes_network():
    config = wu.LXC_CONFIG.format(name="walle-boxed-0", root="/r", base=1, size=65536)
    lines = [line for line in config.splitlines() if not line.startswith("#")]
    assert "lxc.idmap = u 0 1 65536" in lines and "lxc.idmap = g 0 1 65536" in lines
    assert "lxc.cgroup.relative = 1" in lines  # LXC's cgroups stay inside the unit's
    assert "lxc.net.0.type = none" in lines  # the node's network: its ports are the node's
    assert "lxc.include = /usr/share/lxc/config/userns.conf" in lines
    assert [wu.LXC_CONFIG.count("{" + k + "}") for k in ("name", "root", "base", "size")] == \
        [1, 1, 2, 2]  # the only values: made by walle_units and the prepare script
    # the prepare script reaches systemd on one line: no control character in the argument
    assert wu.check_text("prepare", wu.LXC_PREPARE_CODE)
    assert wu.LXC_ID_FIRST >= 0x6FFF0000 + 65536  # above systemd-nspawn's pick range
    assert wu.LXC_ID_FIRST + wu.LXC_ID_RANGES * wu.LXC_ID_SIZE <= 0x7FFE0000


def test_a_changed_stop_hook_rewrites_the_unit_and_a_rerun_changes_nothing(node, wl):
    wl(lxc_args(node, state="present"))
    kind, result, fake = wl(lxc_args(node, state="present"))
    assert kind == "exit" and not result["changed"] and fake.mutating() == []
    kind, result, fake = wl(lxc_args(node, state="present", pre_stop=["/bin/other"]),
                            check=True)
    assert result["changed"] and fake.mutating() == []
    assert "/bin/drain" in (node / "etc" / "walle-boxed-0.service").read_text()
    (change,) = result["diff"]
    assert "/bin/other" in change["after"] and "/bin/drain" in change["before"]


def test_lxc_roots_go_to_run_on_a_node_whose_disk_is_an_overlay(node, wl):
    (node / "mountinfo").write_text(ROOT_ON_OVERLAY)
    wl(lxc_args(node, state="present"))
    text = (node / "etc" / "walle-boxed-0.service").read_text()
    assert '"-P" "/run/walle/lxc/walle-boxed-0/lxc"' in text


@pytest.mark.parametrize(("extra", "option"), [
    ({"image": None}, "image"),
    ({"command": None}, "command"),
    ({"image": "/"}, "image"),
    ({"image": "../x"}, "image"),
    ({"user": "app"}, "user"),
    ({"binds": ["/srv:/srv"]}, "binds"),
    ({"privileged": True}, "privileged"),
    ({"capabilities": ["CAP_NET_ADMIN"]}, "capabilities"),
    ({"credentials": {"k": "v"}}, "credentials"),
    ({"env": {"WALLE_PORT_HTTP": "1"}, "expand_env": ["WALLE_PORT_HTTP"]}, "expand_env"),
    ({"env": {"K": "v\nUser=root"}}, "env"),
    ({"working_dir": "/srv/ "}, "working_dir"),
    ({"pre_stop": ["drain"]}, "pre_stop"),
    ({"args": ["a\nb"]}, "args"),
])
def test_bad_lxc_options_fail_naming_the_option(node, wl, extra, option):
    kind, result, fake = wl(lxc_args(node, **extra))
    assert kind == "fail" and result["option"] == option, result
    assert fake.mutating() == [] and not (node / "etc" / "walle-boxed-0.service").exists()


def test_a_node_without_lxc_is_refused_with_the_package_to_install(node, wl):
    kind, result, _ = wl(lxc_args(node), fake=Fake(lxc_start=None))
    assert kind == "fail" and result["option"] == "runtime"
    assert "Debian package lxc" in result["msg"]


# ---------------------------------------------------- the fixed scripts, run for real here

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown into a uid range needs root")


def prepare(folder: Path, name: str, ids: Path) -> subprocess.CompletedProcess:
    return subprocess.run([wu.LXC_PYTHON, "-c", wu.LXC_PREPARE_CODE, str(folder), name,
                           str(ids), str(wu.LXC_ID_FIRST), str(wu.LXC_ID_SIZE), "3"],
                          capture_output=True, text=True, timeout=60)


def tree(folder: Path) -> None:
    """A root as the overlay setup leaves it: owned by the image's ids."""
    root = folder / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_text("x")
    os.chown(root / "usr" / "bin" / "tool", 0, 5)
    os.chmod(root / "usr" / "bin" / "tool", 0o4755)
    (root / "home").mkdir()
    os.chown(root / "home", 1000, 1000)
    (root / "bin").symlink_to("usr/bin")
    (root / "ping").write_text("x")
    v2 = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw, effective
    os.setxattr(root / "ping", "security.capability", v2)


@needs_root
def test_prepare_shifts_the_root_into_a_range_of_its_own_and_teardown_frees_it(tmp_path):
    ids = tmp_path / "ids"
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir(mode=0o700)
        tree(folder)
        done = prepare(folder, folder.name, ids)
        assert done.returncode == 0, done.stderr
    bases = [int((f / "idmap").read_text()) for f in (first, second)]
    assert bases == [wu.LXC_ID_FIRST, wu.LXC_ID_FIRST + wu.LXC_ID_SIZE]  # one range each
    root, base = first / "root", bases[0]
    tool = os.lstat(root / "usr" / "bin" / "tool")
    assert (tool.st_uid, tool.st_gid) == (base, base + 5)
    assert stat.S_IMODE(tool.st_mode) == 0o4755  # the chown did not drop setuid
    assert os.lstat(root / "home").st_uid == base + 1000
    assert os.lstat(root / "bin").st_uid == base  # the link itself, not its target
    assert os.lstat(root).st_uid == base and stat.S_IMODE(os.lstat(first).st_mode) == 0o711
    cap = os.getxattr(root / "ping", "security.capability")
    assert struct.unpack("<IIIIII", cap) == (0x03000001, 1 << 13, 0, 0, 0, base)
    config = (first / "lxc" / "a" / "config").read_text()
    assert f"lxc.idmap = u 0 {base} 65536" in config and f"dir:{root}" in config
    # started again without a teardown between (the setup made the folder afresh): the
    # range it holds, not a second one
    shutil.rmtree(first)
    first.mkdir(mode=0o700)
    tree(first)
    assert prepare(first, "a", ids).returncode == 0
    assert int((first / "idmap").read_text()) == base and len(os.listdir(ids)) == 2
    # a third fits, a fourth does not: the bound is said, nothing half-made
    third = tmp_path / "c"
    third.mkdir()
    tree(third)
    assert prepare(third, "c", ids).returncode == 0
    fourth = tmp_path / "d"
    fourth.mkdir()
    tree(fourth)
    full = prepare(fourth, "d", ids)
    assert full.returncode != 0 and "no free uid range" in full.stderr
    # teardown: the range is free again, the folder (config, root) gone
    gone = subprocess.run(["/bin/sh", "-c", wu.LXC_TEARDOWN, "walle-lxc", str(first),
                           str(ids)], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0, gone.stderr
    assert not first.exists() and str(base) not in os.listdir(ids)
    assert prepare(fourth, "d", ids).returncode == 0
    assert int((fourth / "idmap").read_text()) == base


def test_the_node_roles_subordinate_ids_are_the_ranges_walle_units_hands_out():
    import yaml

    roles = Path(__file__).resolve().parents[2] / "roles" / "node"
    defaults = yaml.safe_load((roles / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((roles / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    line = f"root:{wu.LXC_ID_FIRST}:{wu.LXC_ID_RANGES * wu.LXC_ID_SIZE}"
    assert defaults["walle_node_lxc_subids"] == line
    assert options["walle_node_lxc_subids"]["default"] == line
    assert defaults["walle_node_lxc"] is False and options["walle_node_lxc"]["default"] is False
