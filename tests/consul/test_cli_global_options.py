"""The CLI as one tool (issue 10 item 4): the global options `--consul-addr`, `--token-file`
and `--json` work before the command and after it, for every cluster command; the token
comes from a file (never the command line) and is sent to Consul; bad option values exit 2
naming the option; an unreachable Consul exits 3."""

from __future__ import annotations

import json

import pytest

from walle.cli.main import EXIT_UNREACHABLE, EXIT_USAGE, build_parser, main

pytestmark = pytest.mark.consul


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [["status"], ["nodes"], ["events"], ["plan"]])
def test_global_options_before_the_command_equal_those_after_it(consul_addr, capsys,
                                                                 command):
    addr = f"http://{consul_addr}"
    before = run(capsys, "--json", "--consul-addr", addr, *command)
    after = run(capsys, *command, "--json", "--consul-addr", addr)
    assert before[0] == after[0] and before[0] in (0, 1)
    assert json.loads(before[1]) is not None and json.loads(after[1]) is not None


def test_a_commands_unset_options_do_not_hide_the_global_ones():
    args = build_parser().parse_args(["--json", "--consul-addr", "http://h:1", "nodes"])
    assert args.json is True and args.consul_addr == "http://h:1"
    args = build_parser().parse_args(["nodes"])
    assert args.json is False and args.consul_addr is None and args.token_file is None


def test_the_token_file_is_read_and_sent_never_printed(consul_addr, capsys, tmp_path,
                                                       monkeypatch):
    seen = []
    from walle.adapters.consul import ConsulApi
    real = ConsulApi.__init__

    def spy(self, config, *a, **kw):
        seen.append(config.token)
        real(self, config, *a, **kw)

    monkeypatch.setattr(ConsulApi, "__init__", spy)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("s3cr3t-token\n")
    code, out, err = run(capsys, "--token-file", str(token), "nodes",
                         "--consul-addr", f"http://{consul_addr}")
    assert code == 0 and seen == ["s3cr3t-token"]
    assert "s3cr3t" not in out + err


@pytest.mark.parametrize("argv, named", [
    (["--token-file", "/nonexistent/token", "status"], "--token-file=/nonexistent/token"),
    (["--consul-addr", "ftp://x:1", "status"], "addr"),
])
def test_bad_global_option_values_exit_2_naming_the_option(capsys, argv, named):
    code, _, err = run(capsys, *argv)
    assert code == EXIT_USAGE and named in err


def test_an_unreachable_consul_exits_3_for_every_cluster_command(capsys):
    for command in (["status"], ["nodes"], ["drain", "node1"], ["logs", "web"],
                    ["events"], ["plan"]):
        code, _, err = run(capsys, "--consul-addr", "http://127.0.0.1:9", *command)
        assert code == EXIT_UNREACHABLE, (command, err)


def test_every_command_honours_json(consul_addr, capsys, monkeypatch):
    """drain, metrics, logs and exec printed text only before (issue 10 item 4)."""
    import test_scheduler_service as fleet

    from walle.adapters.consul import ConsulApi, ConsulConfig, StateStore
    from walle.adapters.runner import CommandResult
    api = ConsulApi(ConsulConfig.from_env(addr=f"http://{consul_addr}"))
    fleet.register_node(api, "jnode1", "10.77.250.41")
    addr = ["--consul-addr", f"http://{consul_addr}", "--json"]
    code, out, _ = run(capsys, "drain", "jnode1", *addr)
    assert code == 0 and json.loads(out) == {"node": "jnode1", "draining": True}
    code, out, _ = run(capsys, "drain", "jnode1", "--undo", *addr)
    assert code == 0 and json.loads(out) == {"node": "jnode1", "draining": False}
    code, out, _ = run(capsys, "metrics", *addr)
    samples = json.loads(out)
    assert code == 0 and {"labels": {"node": "jnode1", "zone": "z1"}, "value": True} in \
        samples["walle_node_up"]
    # logs and exec run on the nodes through ansible: the runner is replaced here (the lab
    # tests run them for real)
    store = StateStore(api)
    s, _ = fleet.make_scheduler(api, fleet.Clock())
    store.put_job(fleet.etl_spec(), 0)
    s.step()
    node = fleet.records(api)["etl-0"].node
    s.lock.step_down()
    calls = []

    def fake(inventory, hosts, argv, timeout=None):
        calls.append((hosts, argv))
        names = hosts if isinstance(hosts, list) else [node]
        return {h: CommandResult(h, rc=0, stdout="line\n")
                for h in names}

    monkeypatch.setattr("walle.cli.ops.run_command", fake)
    code, out, _ = run(capsys, "logs", "etl", *addr)
    assert code == 0 and json.loads(out) == {node: {"units": ["walle-etl-0"], "ok": True,
                                                    "journal": "line\n", "error": ""}}
    # the slot's unit and the runs of a concurrency: allow slot (a glob journalctl reads)
    assert calls[-1][1][-4:] == ["-u", "walle-etl-0.service", "-u", "walle-etl-0@*.service"]
    code, out, _ = run(capsys, "exec", "--json", "--", "/bin/true")
    assert code == 0 and json.loads(out)[node]["rc"] == 0
    assert calls[-1][1] == ["/bin/true"]


def test_exec_and_logs_exit_codes(consul_addr, capsys, monkeypatch):
    monkeypatch.setattr("walle.cli.ops.run_command", lambda *a, **kw: {})
    with pytest.raises(SystemExit) as usage:  # no command: argparse's usage error
        run(capsys, "exec", "--")
    assert usage.value.code == EXIT_USAGE
    code, _, err = run(capsys, "exec", "--", "/bin/true")
    assert code == 1 and "no host matches" in err
    code, _, err = run(capsys, "logs", "no-such-job", "--consul-addr", f"http://{consul_addr}")
    assert code == 1 and "no instances of 'no-such-job'" in err
