"""roles/monitoring: prometheus.yml rendered from the role's defaults passes promtool, and
walle-prometheus-sd turns catalog entries into HTTP SD target groups."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles/monitoring"


def _load_sd():
    spec = importlib.util.spec_from_file_location("walle_prometheus_sd",
                                                  ROLE / "files/walle_prometheus_sd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sd = _load_sd()


def render_config(**overrides) -> str:
    variables = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    variables.update(ansible_managed="managed", **overrides)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True)
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = bool
    return env.get_template("prometheus.yml.j2").render(**variables)


def test_config_scrapes_each_consul_service_through_http_sd():
    config = yaml.safe_load(render_config())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "node", "walle-exporter", "walle"}
    assert jobs["walle-exporter"]["http_sd_configs"][0]["url"] == \
        "http://127.0.0.1:9852/targets/walle-exporter"
    assert jobs["walle"]["honor_labels"] is True and jobs["node"]["honor_labels"] is False
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")
def test_rendered_config_passes_promtool(tmp_path):
    path = tmp_path / "prometheus.yml"
    path.write_text(render_config())
    proc = subprocess.run(["promtool", "check", "config", "--syntax-only", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_catalog_entries_become_target_groups_labelled_with_their_node():
    catalog = [
        {"Node": "node2", "Address": "10.77.3.12", "ServiceName": "walle-exporter",
         "ServiceID": "walle-exporter", "ServiceAddress": "", "ServicePort": 9851},
        {"Node": "node1", "Address": "10.77.3.11", "ServiceName": "walle-exporter",
         "ServiceID": "walle-exporter", "ServiceAddress": "10.77.3.11", "ServicePort": 9851},
        {"Node": "node3", "Address": "fd00::3", "ServiceName": "walle-exporter",
         "ServiceID": "walle-exporter", "ServiceAddress": "", "ServicePort": 9851},
        {"Node": "node4", "Address": "10.77.3.14", "ServiceName": "walle-exporter",
         "ServiceID": "walle-exporter", "ServicePort": 0},  # no port: nothing to scrape
    ]
    groups = sd.target_groups(catalog)
    assert [g["targets"] for g in groups] == [["10.77.3.11:9851"], ["10.77.3.12:9851"],
                                              ["[fd00::3]:9851"]]
    assert groups[1]["labels"] == {"node": "node2", "consul_service": "walle-exporter",
                                   "consul_service_id": "walle-exporter"}


@pytest.mark.parametrize("role, prefix", [("exporter", "walle_exporter_"),
                                          ("monitoring", "walle_monitoring_")])
def test_every_default_is_prefixed_and_in_the_argument_specs(role, prefix):
    root = ROLE.parent / role
    defaults = yaml.safe_load((root / "defaults/main.yml").read_text())
    spec = yaml.safe_load((root / "meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, value in defaults.items():
        assert name.startswith(prefix), name
        assert options[name].get("description"), name
        if isinstance(value, str) and "{{" in value:
            assert "default" not in options[name], f"{name}: templated, no literal default"
        elif "default" in options[name]:
            assert options[name]["default"] == value, f"{name}: argument_specs default differs"
