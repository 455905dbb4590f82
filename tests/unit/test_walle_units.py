"""walle_units: rendering tables, quoting that systemd reads back literally, and refusals."""

from __future__ import annotations

import re

import pytest
from ansible_collections.walle.pool.plugins.module_utils import walle_units as wu
from hypothesis import given
from hypothesis import strategies as st

NASTY = [
    "plain",
    "two words",
    'say "hi"',
    "it's",
    "100%",
    "%n%h",
    "$HOME",
    "${PATH}",
    "back\\slash",
    "trailing\\",
    ";",
    "a;b",
    "#not-a-comment",
    "x=y",
    "",
    "ünïcode ✓",
    "\\n literal",
]
CONTROL = ["line\nExecStartPre=/bin/evil", "nul\x00", "tab\there", "cr\rhere", "del\x7f",
           "nel\x85", "ls\u2028"]


def directives(text: str, key: str) -> list[str]:
    return [v for _s, k, v in wu.parse_unit(text) if k == key]


def service(**kw) -> str:
    base = dict(slice="walle-web-0.slice", argv=["/usr/bin/app"])
    return wu.render_service("walle-web-0", **{**base, **kw})


# ------------------------------------------------------------------------------ rendering

@pytest.mark.parametrize(("kwargs", "expected"), [
    (dict(cpu_weight=150), [("CPUWeight", "150")]),
    (dict(cpu_quota=250), [("CPUQuota", "250%")]),
    (dict(allowed_cpus="0-3,8"), [("AllowedCPUs", "0-3,8")]),
    (dict(memory_min=1 << 30, memory_max="4G"), [("MemoryMin", "1073741824"),
                                                 ("MemoryMax", "4G")]),
    (dict(memory_high="infinity", memory_low="50%"), [("MemoryLow", "50%"),
                                                      ("MemoryHigh", "infinity")]),
    (dict(io_weight=10000, tasks_max="infinity"), [("IOWeight", "10000"),
                                                   ("TasksMax", "infinity")]),
    (dict(io_read_bandwidth_max=[{"device": "/dev/vda", "rate": "10M"}]),
     [("IOReadBandwidthMax", "/dev/vda 10M")]),
    (dict(device_policy="closed", device_allow=["/dev/nvidia0 rw", "char-nvidia-uvm rw"]),
     [("DevicePolicy", "closed"), ("DeviceAllow", "/dev/nvidia0 rw"),
      ("DeviceAllow", "char-nvidia-uvm rw")]),
    (dict(), []),
])
def test_slice_directives(kwargs, expected):
    text = wu.render_slice("walle-web-0.slice", **kwargs)
    assert [(k, v) for s, k, v in wu.parse_unit(text) if s == "Slice"] == expected
    assert directives(text, "Description") == ["Walle slice walle-web-0.slice"]


def test_slice_directives_follow_a_fixed_order_whatever_the_keyword_order():
    a = wu.render_slice("walle.slice", tasks_max=5, cpu_weight=2, memory_max=3)
    b = wu.render_slice("walle.slice", memory_max=3, cpu_weight=2, tasks_max=5)
    assert a == b
    assert [k for s, k, _ in wu.parse_unit(a) if s == "Slice"] == ["CPUWeight", "MemoryMax",
                                                                   "TasksMax"]


def test_service_of_an_exec_workload():
    text = service(env={"B": "2", "A": "1"}, user="www-data", working_dir="/srv/app",
                   restart="always", pre_stop=["/usr/bin/drain", "--wait"],
                   stop_signal="sigint", stop_timeout=1.5)
    entries = wu.parse_unit(text)
    assert ("Service", "Type", "exec") in entries
    assert ("Service", "Slice", "walle-web-0.slice") in entries
    assert directives(text, "Environment") == ['"A=1"', '"B=2"']
    assert directives(text, "User") == ["www-data"]
    assert directives(text, "WorkingDirectory") == ["/srv/app"]
    assert directives(text, "Restart") == ["always"]
    assert wu.split_exec_words(directives(text, "ExecStop")[0]) == ["/usr/bin/drain", "--wait"]
    assert directives(text, "KillSignal") == ["SIGINT"]
    assert directives(text, "TimeoutStopSec") == ["1500ms"]
    assert directives(text, "SendSIGKILL") == ["yes"]
    assert directives(text, "KillMode") == []  # systemd's control-group default


def test_batch_limits_starts_over_the_whole_boot():
    text = service(restart="on-failure", start_limit_burst=4)
    assert directives(text, "StartLimitBurst") == ["4"]
    assert directives(text, "StartLimitIntervalSec") == ["infinity"]
    assert [s for s, k, _ in wu.parse_unit(text) if k == "StartLimitBurst"] == ["Unit"]


def test_oneshot_does_not_remain_after_exit():
    text = service(service_type="oneshot")
    assert directives(text, "RemainAfterExit") == ["no"]


def test_timer_points_at_its_service_to_the_second():
    text = wu.render_timer("walle-rep-0", schedule="Mon..Fri *-*-* 02:00:00")
    assert [(s, k, v) for s, k, v in wu.parse_unit(text) if s == "Timer"] == [
        ("Timer", "OnCalendar", "Mon..Fri *-*-* 02:00:00"), ("Timer", "AccuracySec", "1s"),
        ("Timer", "Persistent", "true"), ("Timer", "Unit", "walle-rep-0.service")]


def test_a_replace_timer_starts_the_unit_that_restarts_the_run():
    text = wu.render_timer("walle-rep-0", schedule="hourly", replace=True)
    assert directives(text, "Unit") == ["walle-rep-0-replace.service"]
    kick = wu.render_replace("walle-rep-0")
    assert directives(kick, "Type") == ["oneshot"]
    assert wu.split_exec_words(directives(kick, "ExecStart")[0]) == [
        "/bin/systemctl", "--no-block", "restart", "walle-rep-0.service"]
    with pytest.raises(ValueError, match="name"):
        wu.render_replace("walle-x-0.service\nExecStart=/bin/evil")


def test_cron_retries_restart_after_a_delay_without_a_start_limit():
    text = service(service_type="oneshot", restart="on-failure", restart_delay=2.5,
                   post_stop=["/usr/local/libexec/walle/walle-cron-record", "--retries", "2"])
    assert directives(text, "Restart") == ["on-failure"]
    assert directives(text, "RestartSec") == ["2500ms"]
    # the timer's own starts must never trip systemd's default 5-per-10s limit
    assert directives(text, "StartLimitIntervalSec") == ["0"]
    assert directives(text, "ExecStopPost")[0].startswith(
        '+"/usr/local/libexec/walle/walle-cron-record"')


# -------------------------------------------------------------------------------- quoting

@pytest.mark.parametrize("arg", NASTY)
def test_every_argument_is_one_literal_word_in_one_exec_start(arg):
    text = service(argv=["/usr/bin/app", arg, "next"])
    exec_starts = directives(text, "ExecStart")
    assert len(exec_starts) == 1
    assert wu.split_exec_words(exec_starts[0]) == ["/usr/bin/app", arg, "next"]
    assert not any(k.startswith("ExecStartPre") for _s, k, _v in wu.parse_unit(text))


@pytest.mark.parametrize("arg", NASTY)
def test_pre_stop_arguments_are_literal(arg):
    text = service(pre_stop=["/bin/hook", arg])
    assert [wu.split_exec_words(v) for v in directives(text, "ExecStop")] == [["/bin/hook", arg]]


PRINTABLE = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                    max_size=40)


@given(st.lists(PRINTABLE, max_size=6))
def test_any_printable_argv_round_trips_through_one_exec_start(args):
    text = service(argv=["/usr/bin/app", *args])
    (exec_start,) = directives(text, "ExecStart")
    assert wu.split_exec_words(exec_start) == ["/usr/bin/app", *args]


def test_quoting_escapes_specifiers_variables_quotes_and_backslashes():
    assert wu.quote_exec_arg('a%b$c"d\\e') == '"a%%b$$c\\"d\\\\e"'


@pytest.mark.parametrize("value", NASTY)
def test_env_values_are_one_literal_environment_line(value):
    text = service(env={"GREETING": value})
    (line,) = directives(text, "Environment")
    assert line.startswith('"GREETING=') and line.endswith('"')
    inner = line[1:-1]
    unescaped = inner.replace("\\\\", "\x00").replace('\\"', '"').replace("\x00", "\\")
    assert unescaped.replace("%%", "%") == f"GREETING={value}"


def test_description_escapes_specifiers():
    text = service(description="web at 100% (%n)")
    assert directives(text, "Description") == ["web at 100%% (%%n)"]


# --------------------------------------------------------------------------------- refusals

STRING_FIELDS = {
    "args": lambda v: service(argv=["/usr/bin/app", v]),
    "command": lambda v: service(argv=["/usr/bin/app" + v]),
    "env": lambda v: service(env={"K": v}),
    "working_dir": lambda v: service(working_dir="/srv/" + v),
    "user": lambda v: service(user="app" + v),
    "description": lambda v: service(description="d " + v + " d"),
    "pre_stop": lambda v: service(pre_stop=["/bin/hook", v]),
    "environment_file": lambda v: service(environment_file="/etc/" + v),
    "stop_signal": lambda v: service(stop_signal="SIGTERM" + v),
    "schedule": lambda v: wu.render_timer("walle-x-0", schedule="daily" + v),
    "device_allow": lambda v: wu.render_slice("walle.slice", device_allow=["/dev/null" + v]),
    "allowed_cpus": lambda v: wu.render_slice("walle.slice", allowed_cpus="0" + v),
    "name": lambda v: wu.render_slice("walle-a" + v + ".slice"),
    "slice": lambda v: service(slice="walle-a" + v + ".slice"),
    "memory_max": lambda v: wu.render_slice("walle.slice", memory_max="1G" + v),
}


@pytest.mark.parametrize("field", sorted(STRING_FIELDS))
@pytest.mark.parametrize("bad", CONTROL)
def test_control_characters_are_refused_naming_the_field(field, bad):
    with pytest.raises(ValueError, match=rf"^{field}"):
        STRING_FIELDS[field](bad)


@pytest.mark.parametrize(("field", "call"), [
    ("name", lambda: wu.render_slice("web.slice")),
    ("name", lambda: wu.render_slice("walle-web.service")),
    ("name", lambda: wu.render_service("web-0", slice="walle.slice", argv=["/x"])),
    ("slice", lambda: service(slice="system.slice")),
    ("command", lambda: service(argv=["relative/app"])),
    ("command", lambda: service(argv=[])),
    ("pre_stop", lambda: service(pre_stop=["hook"])),
    ("working_dir", lambda: service(working_dir="srv")),
    ("user", lambda: service(user="Root Name")),
    ("env.1BAD", lambda: service(env={"1BAD": "x"})),
    ("env.A=B", lambda: service(env={"A=B": "x"})),
    ("description", lambda: service(description="ends with \\")),
    ("description", lambda: service(description=" padded")),
    ("stop_signal", lambda: service(stop_signal="TERM; rm")),
    ("stop_timeout", lambda: service(stop_timeout=-1)),
    ("retries", lambda: service(start_limit_burst=0)),
    ("schedule", lambda: wu.render_timer("walle-x-0", schedule="daily;\\")),
    ("schedule", lambda: wu.render_timer("walle-x-0", schedule="$(reboot)")),
    ("cpu_weight", lambda: wu.render_slice("walle.slice", cpu_weight=0)),
    ("cpu_weight", lambda: wu.render_slice("walle.slice", cpu_weight=True)),
    ("io_weight", lambda: wu.render_slice("walle.slice", io_weight=10001)),
    ("cpu_quota", lambda: wu.render_slice("walle.slice", cpu_quota=-5)),
    ("memory_max", lambda: wu.render_slice("walle.slice", memory_max="4 GX")),
    ("memory_min", lambda: wu.render_slice("walle.slice", memory_min=-1)),
    ("tasks_max", lambda: wu.render_slice("walle.slice", tasks_max="lots")),
    ("device_policy", lambda: wu.render_slice("walle.slice", device_policy="open")),
    ("device_allow[0]", lambda: wu.render_slice("walle.slice", device_allow=["/dev/x rw; y"])),
    ("device_allow[0]", lambda: wu.render_slice("walle.slice", device_allow=["/etc/passwd"])),
    ("io_read_bandwidth_max[0]",
     lambda: wu.render_slice("walle.slice", io_read_bandwidth_max=[{"device": "/dev/vda"}])),
    ("io_write_bandwidth_max[0].rate",
     lambda: wu.render_slice("walle.slice",
                             io_write_bandwidth_max=[{"device": "/dev/vda", "rate": "5%"}])),
])
def test_bad_values_are_refused_naming_the_field(field, call):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(field + ":")


# ----------------------------------------------------------------------- sizes and durations

@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (30, "30s"), (30.0, "30s"), (1.5, "1500ms"), (0.25, "250ms"),
    (float("inf"), "infinity"),
])
def test_format_duration(seconds, text):
    assert wu.format_duration("t", seconds) == text


@pytest.mark.parametrize(("text", "size"), [
    ("1024", 1024), ("4G", 4 << 30), ("1.5K", 1536), ("512M", 512 << 20), ("infinity", None),
])
def test_parse_size_inverts_systemd_sizes(text, size):
    assert wu.parse_size(text) == size
    assert wu.format_size("s", text) == text


# ---------------------------------------------------------------------------------- parsing

def test_parse_unit_joins_continuation_lines_like_systemd():
    text = "[Service]\nExecStart=/bin/a \\\n  b\n# ExecStop=/x\n;c\nUser=u\n"
    assert wu.parse_unit(text) == [("Service", "ExecStart", "/bin/a    b"),
                                   ("Service", "User", "u")]


def test_parse_systemctl_show():
    text = "ActiveState=active\nMainPID=4242\nExecMainStartTimestamp=\nDescription=a=b\n"
    assert wu.parse_systemctl_show(text) == {"ActiveState": "active", "MainPID": "4242",
                                             "ExecMainStartTimestamp": "",
                                             "Description": "a=b"}


@pytest.mark.parametrize("name", ["walle.slice", "walle-web.slice", "walle-web_api-0.slice"])
def test_valid_slice_names(name):
    assert wu.validate_slice_name(name) == name


# ------------------------------------------------------------------------------ sandbox

def test_every_service_is_sandboxed_unless_told_otherwise():
    keys = [k for _s, k, _v in wu.parse_unit(service())]
    assert {"DynamicUser", "NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet",
            "SystemCallFilter", "PrivateDevices"} <= set(keys)
    bare = [k for _s, k, _v in wu.parse_unit(service(sandbox=False))]
    assert "DynamicUser" not in bare and "ProtectSystem" not in bare


@pytest.mark.parametrize(("kwargs", "field"), [
    (dict(user="root"), "user"),
    (dict(user="0"), "user"),
    (dict(capabilities=["CAP_SYS_ADMIN\nUser=root"]), "capabilities[0]"),
    (dict(sandbox=False, capabilities=["CAP_NET_RAW"]), "capabilities"),
    (dict(sandbox=False, device_allow=["/dev/null rw"]), "device_allow"),
    (dict(credentials={"a/b": "/run/x"}), "credentials"),
    (dict(credentials={"ok": "relative"}), "credentials.ok"),
])
def test_sandbox_refusals_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}:"):
        service(**kwargs)


def test_a_working_dir_with_spaces_stays_one_writable_path():
    """ReadWritePaths= is a space-separated list: an unquoted working_dir with a space was split
    into a missing path and a relative one, so the directory was not writable."""
    text = wu.render_service("walle-web-0", slice="walle-web-0.slice", argv=["/bin/true"],
                             working_dir='/srv/a b/{{ x }}/50%/"q"')
    assert 'ReadWritePaths="-/srv/a b/{{ x }}/50%%/\\"q\\""' in text.splitlines()


def test_batch_units_remain_after_exit_so_their_outcome_stays_readable():
    text = wu.render_service("walle-etl-0", slice="walle-etl-0.slice", argv=["/bin/true"],
                             restart="on-failure", start_limit_burst=3,
                             remain_after_exit=True)
    assert "RemainAfterExit=yes" in text.splitlines()
    plain = wu.render_service("walle-web-0", slice="walle-web-0.slice", argv=["/bin/true"])
    assert "RemainAfterExit" not in plain


# ----------------------------------------------------- the instance's port variables in args

PORT_ENV = {"WALLE_PORT_HTTP": "20001", "PORT": "20001", "HOME": "/root"}


def systemd_argv(value: str, env: dict[str, str]) -> list[str]:
    """What systemd runs for an ExecStart= value: words unquoted with C escapes, then `%%`,
    `$$` and `${NAME}`/`$NAME` (the environment's value, empty when unset) read left to
    right: an oracle of systemd.service(5)'s "Command lines" rules."""
    out = []
    for raw in wu.raw_exec_words(value):
        word, i = [], 0
        while i < len(raw):
            if raw.startswith(("%%", "$$"), i):
                word.append(raw[i])
                i += 2
            elif raw[i] == "$" and (m := re.match(r"\$\{(\w+)\}|\$(\w+)", raw[i:])):
                word.append(env.get(m.group(1) or m.group(2), ""))
                i += m.end()
            else:
                word.append(raw[i])
                i += 1
        out.append("".join(word))
    return out


def ported(args: list[str]) -> list[str]:
    text = service(argv=["/usr/bin/app", *args], env=PORT_ENV, expand_env=["WALLE_PORT_HTTP"])
    (exec_start,) = directives(text, "ExecStart")
    return systemd_argv(exec_start, PORT_ENV)[1:]


@pytest.mark.parametrize(("arg", "runs"), [
    ("${WALLE_PORT_HTTP}", "20001"),
    ("--port=${WALLE_PORT_HTTP}", "--port=20001"),
    ("${WALLE_PORT_HTTP}:${WALLE_PORT_HTTP}", "20001:20001"),
    ("$WALLE_PORT_HTTP", "$WALLE_PORT_HTTP"),  # only the braced form
    ("${WALLE_PORT_X}", "${WALLE_PORT_X}"),  # not one of the instance's labels
    ("${PORT}", "${PORT}"), ("$HOME", "$HOME"), ("${HOME}", "${HOME}"), ("%n", "%n"),
    ("$${WALLE_PORT_HTTP}", "$20001"), ("${WALLE_PORT_HTTP", "${WALLE_PORT_HTTP"),
    ('"${WALLE_PORT_HTTP}"', '"20001"'), ("\\${WALLE_PORT_HTTP}", "\\20001"),
])
def test_only_the_instances_own_port_variables_are_substituted_in_args(arg, runs):
    assert ported([arg]) == [runs]


@given(st.lists(PRINTABLE, max_size=6))
def test_with_port_variables_every_other_character_still_reaches_the_program(args):
    assert ported(args) == [a.replace("${WALLE_PORT_HTTP}", "20001") for a in args]


@pytest.mark.parametrize(("expand", "why"), [
    (["HOME"], "WALLE_PORT_<LABEL>"), (["WALLE_PORT_ADMIN"], "not a variable of env"),
    (["walle_port_http"], "WALLE_PORT_<LABEL>"),
])
def test_expand_env_names_only_the_units_own_port_variables(expand, why):
    env = {**PORT_ENV, "walle_port_http": "1"}
    with pytest.raises(ValueError, match=re.escape(why)):
        service(argv=["/usr/bin/app", "${HOME}"], env=env, expand_env=expand)


# ---- nspawn instance roots ----------------------------------------------------------------

def test_nspawn_instance_root_is_a_folder_per_instance_with_fixed_scripts():
    root = wu.nspawn_instance_root("walle-web-1", "/var/lib/walle/images/sha256-ab12")
    assert root["dir"] == "/var/lib/walle/instances/walle-web-1"
    assert root["root"] == "/var/lib/walle/instances/walle-web-1/root"
    # the paths are arguments of a fixed script, never part of its text
    assert root["setup"] == ["/bin/sh", "-c", wu.NSPAWN_ROOT_SETUP, "walle-root",
                             root["dir"], "/var/lib/walle/images/sha256-ab12"]
    assert root["teardown"] == ["/bin/sh", "-c", wu.NSPAWN_ROOT_TEARDOWN, "walle-root",
                                root["dir"]]
    assert "walle-web" not in wu.NSPAWN_ROOT_SETUP + wu.NSPAWN_ROOT_TEARDOWN
    assert "--one-file-system" in wu.NSPAWN_ROOT_TEARDOWN  # never into the image below


@pytest.mark.parametrize(("name", "image", "field"), [
    ("walle-web-1", "/var/lib/walle/images/a,upperdir=/etc", "image"),
    ("walle-web-1", "/var/lib/walle/images/a:/etc", "image"),
    ("walle-web-1", "/var/lib/walle/images/../../etc", "image"),
    ("walle-web-1", "relative/image", "image"),
    ("walle-web-1", "/var/lib/walle/images/a\\b", "image"),
    ("walle-a:b", "/var/lib/walle/images/a", "name"),
    ("web-1", "/var/lib/walle/images/a", "name"),
])
def test_nspawn_instance_root_refuses_what_overlayfs_would_misread(name, image, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        wu.nspawn_instance_root(name, image)


def test_service_renders_start_steps_and_cleanup_in_order():
    text = wu.render_service("walle-x-0", slice="walle-x-0.slice", argv=["/bin/true"],
                             sandbox=False, pre_start=[["/bin/a", "1"], ["/bin/b"]],
                             cleanup=["/bin/c", "$x"], post_stop=["/bin/d"])
    entries = [(k, v) for _s, k, v in wu.parse_unit(text) if k.startswith("Exec")]
    assert entries == [("ExecStartPre", '"/bin/a" "1"'), ("ExecStartPre", '"/bin/b"'),
                       ("ExecStart", '"/bin/true"'), ("ExecStopPost", '-+"/bin/c" "$$x"'),
                       ("ExecStopPost", '+"/bin/d"')]
