"""Valid specs become the JobSpec they describe: units, ranges, durations, defaults, digests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from walle.jobspec import (
    HealthCheck,
    Range,
    SpecError,
    StopPolicy,
    UpdatePolicy,
    load_spec_file,
    load_spec_text,
    parse_spec,
    spec_to_data,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yml"))
MIB, GIB = 1024**2, 1024**3


def minimal(**extra) -> dict:
    data = {"name": "job", "kind": "batch", "resources": {"cpu": 1, "memory": "64M"},
            "runtime": {"command": "/bin/true"}}
    data.update(extra)
    return data


def with_resources(**resources) -> dict:
    return minimal(resources={"cpu": 1, "memory": "64M", **resources})


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"web.yml", "batch.yml", "nightly.yml",
                                          "gpu-train.yml", "nspawn.yml", "lxc.yml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_parses_and_round_trips(path):
    spec = load_spec_file(path)
    assert spec.name == yaml.safe_load(path.read_text())["name"]
    again = parse_spec(json.loads(json.dumps(spec_to_data(spec))))
    assert again == spec
    assert again.digest() == spec.digest()


def test_the_full_example_in_the_docs_parses():
    doc = (REPO / "docs" / "jobspec.md").read_text()
    block = re.search(r"## A full example\n\n```yaml\n(.*?)```", doc, re.S)
    spec = load_spec_text(block[1], "docs/jobspec.md")
    assert [c.operator for c in spec.constraints] == ["ne", "eq", "distinct_hosts", "max_per"]
    assert spec.health.port == spec.service.port == "http"
    assert spec.dynamic_labels == ("http",) and spec.static_ports() == (9000,)


def test_web_example_is_the_labs_main_job():
    spec = load_spec_file(next(p for p in EXAMPLES if p.name == "web.yml"))
    assert (spec.kind, spec.count) == ("service", 3)
    assert spec.runtime.command == "/usr/bin/python3"
    assert spec.runtime.args[:2] == ("-m", "http.server")
    assert spec.resources.cpu == Range(0.1, 0.5)
    assert spec.resources.memory == Range(32 * MIB, 128 * MIB)
    # a dynamic port per instance: several may share a node (no distinct_hosts)
    assert [(p.label, p.static) for p in spec.ports] == [("http", None)]
    assert spec.runtime.args[2] == "${WALLE_PORT_HTTP}"
    assert spec.health.type == "http" and spec.health.port == "http"
    assert spec.service.port == "http" and not spec.constraints
    assert spec.stop.pre_stop[0].startswith("/")


def test_example_kinds():
    by_name = {p.name: load_spec_file(p) for p in EXAMPLES}
    assert by_name["nightly.yml"].kind == "cron" and by_name["nightly.yml"].schedule
    assert by_name["gpu-train.yml"].resources.gpus == 1
    assert by_name["gpu-train.yml"].strategy == "binpack"
    assert by_name["nspawn.yml"].runtime.kind == "nspawn"
    assert by_name["lxc.yml"].runtime.kind == "lxc"
    assert by_name["batch.yml"].kind == "batch"


@pytest.mark.parametrize(("cpu", "expected"), [
    (2, Range(2, 2)),
    (0.25, Range(0.25, 0.25)),
    ("0.5", Range(0.5, 0.5)),
    ("0.5-2", Range(0.5, 2)),
    (" 1 - 3 ", Range(1, 3)),
    ({"min": 0.5, "max": 2}, Range(0.5, 2)),
    ({"min": 1}, Range(1, 1)),
])
def test_cpu_ranges(cpu, expected):
    assert parse_spec(with_resources(cpu=cpu)).resources.cpu == expected


@pytest.mark.parametrize(("memory", "expected"), [
    (1024, Range(1024, 1024)),
    ("1.5K", Range(1536, 1536)),
    ("512M", Range(512 * MIB, 512 * MIB)),
    ("512MiB", Range(512 * MIB, 512 * MIB)),
    ("128m-512M", Range(128 * MIB, 512 * MIB)),
    ("0-1G", Range(0, GIB)),
    ({"min": 0, "max": "2G"}, Range(0, 2 * GIB)),
    ("1T", Range(1024 * GIB, 1024 * GIB)),
])
def test_memory_sizes_and_ranges(memory, expected):
    assert parse_spec(with_resources(memory=memory)).resources.memory == expected


def test_elastic_means_max_above_min():
    assert parse_spec(with_resources(cpu="0.5-2")).resources.cpu.elastic
    assert not parse_spec(with_resources(cpu=1)).resources.cpu.elastic


def test_other_resources():
    res = parse_spec(with_resources(disk="1G", io_weight=200, gpus=2, tasks_max=64)).resources
    assert (res.disk, res.io_weight, res.gpus, res.tasks_max) == (GIB, 200, 2, 64)


@pytest.mark.parametrize(("text", "seconds"), [
    (5, 5.0), (0.5, 0.5), ("500ms", 0.5), ("10s", 10.0), ("2m", 120.0), ("1h", 3600.0),
    ("1m30s", 90.0), ("1.5s", 1.5),
])
def test_durations(text, seconds):
    spec = parse_spec(minimal(stop={"timeout": text}))
    assert spec.stop.timeout == seconds


def test_defaults():
    spec = parse_spec(minimal())
    assert (spec.count, spec.priority, spec.strategy, spec.restart, spec.retries) == (
        1, 50, None, "on-failure", 3)
    assert spec.runtime.kind == "exec"
    assert spec.health is None and spec.service is None and spec.schedule is None
    assert spec.stop == StopPolicy() and spec.update == UpdatePolicy()
    assert spec.constraints == () and spec.data == ()


def test_null_values_count_as_absent():
    assert parse_spec(minimal(health=None, strategy=None)) == parse_spec(minimal())


def test_service_name_defaults_to_the_job_name():
    spec = parse_spec(minimal(kind="service", service={"port": 80}))
    assert (spec.service.name, spec.service.port, spec.service.tags) == ("job", 80, ())


def test_health_port_defaults_to_the_service_port():
    spec = parse_spec(minimal(kind="service", service={"port": 9090},
                              health={"type": "tcp"}))
    assert spec.health == HealthCheck(type="tcp", port=9090)


def test_health_check_kinds():
    ttl = parse_spec(minimal(health={"type": "ttl", "ttl": "30s"})).health
    assert ttl.ttl == 30.0 and ttl.port is None


def test_env_is_sorted_pairs_of_strings():
    spec = parse_spec(minimal(runtime={"command": "/bin/true",
                                       "env": {"ZED": "z", "A": 1, "B_2": 1.5}}))
    assert spec.runtime.env == (("A", "1"), ("B_2", "1.5"), ("ZED", "z"))


def test_numbers_in_args_become_text_and_percent_is_kept():
    spec = parse_spec(minimal(runtime={"command": "/bin/echo", "args": [8080, "100%", "%h"]}))
    assert spec.runtime.args == ("8080", "100%", "%h")


def test_bare_no_in_yaml_means_restart_no():
    text = yaml.safe_dump(minimal()) + "restart: no\n"
    assert load_spec_text(text).restart == "no"


@pytest.mark.parametrize(("constraint", "value"), [
    ({"attribute": "zone", "operator": "eq", "value": "z1"}, "z1"),
    ({"attribute": "label.ssd", "operator": "eq", "value": "true"}, "true"),
    ({"attribute": "rack", "operator": "in", "value": ["r1", 2]}, ("r1", "2")),
    ({"attribute": "rack", "operator": "max_per", "value": 2}, 2),
    ({"attribute": "name", "operator": "regex", "value": "^node[12]$"}, "^node[12]$"),
])
def test_constraints(constraint, value):
    (parsed,) = parse_spec(minimal(constraints=[constraint])).constraints
    assert (parsed.attribute, parsed.operator, parsed.value) == (
        constraint["attribute"], constraint["operator"], value)


def test_distinct_hosts_is_per_node_name():
    (parsed,) = parse_spec(minimal(constraints=[{"operator": "distinct_hosts"}])).constraints
    assert (parsed.attribute, parsed.operator, parsed.value) == ("name", "distinct_hosts", None)


@pytest.mark.parametrize("schedule", [
    "*-*-* 02:00:00", "daily", "hourly", "Mon..Fri 09:30", "Sat,Sun *-*-* 10:00",
    "*:0/15", "2025-01-01 00:00:00 UTC", "Mon", "*-*-01 04:00 Europe/Paris",
])
def test_cron_schedules_of_the_usual_shapes(schedule):
    assert parse_spec(minimal(kind="cron", schedule=schedule)).schedule == schedule


def test_json_input_is_accepted():
    data = minimal(kind="service", service={"port": 80, "tags": ["a"]},
                   health={"type": "http", "path": "/healthz"})
    assert load_spec_text(json.dumps(data)) == parse_spec(data)


def test_yaml_merge_keys_are_not_duplicates():
    text = ("name: job\nkind: batch\nruntime: {command: /bin/true}\n"
            "resources:\n  <<: {cpu: 1, memory: 64M}\n  memory: 128M\n")
    assert load_spec_text(text).resources.memory == Range(128 * MIB, 128 * MIB)


def test_digest_is_stable_and_independent_of_key_order():
    data = minimal(runtime={"command": "/bin/true", "env": {"A": "1", "B": "2"}})
    reordered = dict(reversed(list(data.items())))
    reordered["runtime"] = {"env": {"B": "2", "A": "1"}, "command": "/bin/true"}
    assert parse_spec(data).digest() == parse_spec(reordered).digest()
    assert parse_spec(data).runtime_digest() == parse_spec(reordered).runtime_digest()


def test_changing_args_changes_both_digests():
    before = parse_spec(minimal(runtime={"command": "/bin/echo", "args": ["a"]}))
    after = parse_spec(minimal(runtime={"command": "/bin/echo", "args": ["b"]}))
    assert before.runtime_digest() != after.runtime_digest()
    assert before.digest() != after.digest()


def test_stop_drain_needs_no_restart_and_leaves_other_specs_digests_alone():
    plain = parse_spec(minimal())
    drained = parse_spec(minimal(stop={"drain": "8s"}))
    assert drained.stop.drain == 8.0 and plain.stop.drain is None
    assert "drain" not in plain.to_dict()["stop"]  # digests of existing jobs do not move
    assert drained.runtime_digest() == plain.runtime_digest()  # no restart to change it
    assert drained.digest() != plain.digest()
    assert parse_spec(spec_to_data(drained)) == drained  # kept through KV


def test_changing_only_cpu_keeps_the_runtime_digest():
    before = parse_spec(with_resources(cpu="0.5-1"))
    after = parse_spec(with_resources(cpu="0.5-2"))
    assert before.runtime_digest() == after.runtime_digest()
    assert before.digest() != after.digest()


def test_a_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as caught:
        load_spec_file(tmp_path / "absent.yml")
    assert "cannot read file" in caught.value.problems[0].message
    assert str(tmp_path / "absent.yml") in str(caught.value)


def test_a_non_utf8_file_is_a_spec_error(tmp_path):
    path = tmp_path / "latin1.yml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SpecError) as caught:
        load_spec_file(path)
    assert "not UTF-8" in caught.value.problems[0].message


def test_a_service_asks_for_a_load_balancer_frontend():
    plain = minimal(kind="service", service={"port": 8080}, retries=None)
    behind = minimal(kind="service", service={"port": 8080, "lb": {"port": 80}}, retries=None)
    spec, balanced = parse_spec(plain), parse_spec(behind)
    assert spec.service.lb is None
    assert (balanced.service.lb.port, balanced.service.lb.mode) == (80, "http")
    tcp = parse_spec(minimal(kind="service", service={"port": 5432, "lb": {"port": 5432,
                                                                           "mode": "tcp"}}))
    assert tcp.service.lb.mode == "tcp"
    assert parse_spec(json.loads(json.dumps(spec_to_data(balanced)))) == balanced
    # the balancer is not the instance's: adding one changes the version, never the runtime
    # (no restart), and a spec without one keeps the digests it had before the field existed
    assert balanced.digest() != spec.digest()
    assert balanced.runtime_digest() == spec.runtime_digest()
    assert "lb" not in spec.to_dict()["service"]


def test_cron_concurrency_is_kept_and_round_trips_and_leaves_other_digests_alone():
    plain = parse_spec(minimal(kind="cron", schedule="hourly"))
    assert plain.concurrency is None and "concurrency" not in plain.to_dict()
    replace = parse_spec(minimal(kind="cron", schedule="hourly", concurrency="replace"))
    assert replace.concurrency == "replace"
    assert parse_spec(spec_to_data(replace)) == replace
    # a different policy is a different unit text: a replace, not an in-place update
    assert replace.runtime_digest() != plain.runtime_digest()
    assert replace.max_runs is None and "max_runs" not in replace.to_dict()


def test_cron_concurrency_allow_has_a_bound_that_defaults_and_round_trips():
    short = parse_spec(minimal(kind="cron", schedule="hourly", concurrency="allow"))
    assert (short.concurrency, short.max_runs) == ("allow", 3)
    assert parse_spec(spec_to_data(short)) == short
    five = parse_spec(minimal(kind="cron", schedule="hourly",
                              concurrency={"policy": "allow", "max": 5}))
    assert (five.concurrency, five.max_runs) == ("allow", 5)
    assert parse_spec(spec_to_data(five)) == five
    # the bound is in the launcher's unit text: a changed bound is placed again
    assert five.runtime_digest() != short.runtime_digest()
    forbid = parse_spec(minimal(kind="cron", schedule="hourly",
                                concurrency={"policy": "forbid"}))
    assert (forbid.concurrency, forbid.max_runs) == ("forbid", None)


def test_scaling_is_parsed_with_defaults_and_round_trips():
    spec = parse_spec(minimal(kind="service", count=2,
                              scaling={"min": 1, "max": 5, "metric": "cpu", "target": 60}))
    assert (spec.scaling.min, spec.scaling.max, spec.scaling.metric) == (1, 5, "cpu")
    assert spec.scaling.target == 60 and spec.scaling.cooldown == 60 and not spec.scaling.query
    assert parse_spec(spec_to_data(spec)) == spec
    prom = parse_spec(minimal(kind="service", scaling={
        "min": 0, "max": 3, "target": 100, "cooldown": "30s",
        "metric": {"prometheus": "sum(rate(req[1m]))"}}))
    assert (prom.scaling.metric, prom.scaling.query) == ("prometheus", "sum(rate(req[1m]))")
    assert prom.scaling.cooldown == 30 and parse_spec(spec_to_data(prom)) == prom
    # specs without scaling keep the digest they had
    assert "scaling" not in parse_spec(minimal()).to_dict()
