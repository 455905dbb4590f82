"""`walle validate`: exit codes, one line per result, and the --json shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from walle.cli.main import main
from walle.jobspec import load_spec_file

EXAMPLES = sorted(str(p) for p in (Path(__file__).resolve().parents[2] / "examples").glob("*.yml"))
BAD_SPEC = "name: Web\nkind: service\nresources: {cpu: 1, memory: 1G}\nruntime: {command: x}\n"


@pytest.fixture
def bad_file(tmp_path: Path) -> str:
    path = tmp_path / "bad.yml"
    path.write_text(BAD_SPEC)
    return str(path)


def test_valid_files_print_ok_with_kind_name_and_digest(capsys):
    assert main(["validate", *EXAMPLES]) == 0
    out, err = capsys.readouterr()
    expected = []
    for path in EXAMPLES:
        spec = load_spec_file(path)
        expected.append(f"ok {path} ({spec.kind} {spec.name}, digest {spec.digest()})")
    assert out.splitlines() == expected
    assert err == ""


def test_invalid_file_exits_2_with_one_line_per_problem(capsys, bad_file):
    assert main(["validate", bad_file]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad_file}: name: ")
    assert lines[1].startswith(f"{bad_file}: runtime.command: ")


def test_one_bad_file_among_good_ones_fails_the_run(capsys, bad_file):
    assert main(["validate", EXAMPLES[0], bad_file]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"ok {EXAMPLES[0]} ")
    assert bad_file in err and EXAMPLES[0] not in err


def test_unreadable_file_exits_2_and_says_why(capsys, tmp_path):
    missing = str(tmp_path / "missing.yml")
    assert main(["validate", missing]) == 2
    _, err = capsys.readouterr()
    assert err.strip() == f"{missing}: <root>: cannot read file: No such file or directory"


def test_json_output_lists_every_file(capsys, bad_file):
    assert main(["validate", "--json", EXAMPLES[0], bad_file]) == 2
    results = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in results] == [EXAMPLES[0], bad_file]
    good, bad = results
    assert good["ok"] is True and good["problems"] == []
    assert good["digest"] == load_spec_file(EXAMPLES[0]).digest()
    assert bad["ok"] is False
    assert [p["path"] for p in bad["problems"]] == ["name", "runtime.command"]
    assert all(set(p) == {"path", "message"} and p["message"] for p in bad["problems"])


def test_json_output_exits_0_when_all_valid(capsys):
    assert main(["validate", "--json", *EXAMPLES]) == 0
    assert all(r["ok"] for r in json.loads(capsys.readouterr().out))


def test_no_file_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["validate"])
    assert caught.value.code == 2
    assert "FILE" in capsys.readouterr().err


def test_privileged_spec_is_valid_and_says_the_cluster_policy_decides(capsys, tmp_path):
    head = "kind: service\nresources: {cpu: 0.1, memory: 32M}\n"
    root, caps = tmp_path / "root.yml", tmp_path / "caps.yml"
    root.write_text(f"name: root-job\n{head}"
                    "runtime: {command: /usr/sbin/app, user: root, privileged: true}\n")
    caps.write_text(f"name: caps-job\n{head}"
                    "runtime: {command: /usr/sbin/app, capabilities: [CAP_NET_ADMIN]}\n")
    assert main(["validate", str(root), str(caps)]) == 0
    out = capsys.readouterr().out
    assert "note: runtime.privileged: runs only where the cluster policy allows" in out
    assert "(--allow-capability CAP_NET_ADMIN)" in out
