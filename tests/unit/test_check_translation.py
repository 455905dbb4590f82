"""One check translation: the registration walle_consul_service sends for the arguments the
scheduler gives it (service/params.py) is the registration the Consul adapter sends for the
same spec (tests and tools register through the adapter), for every health type."""

from __future__ import annotations

import io
import json
from urllib.error import HTTPError

import pytest
from ansible.module_utils.testing import patch_module_args
from module_harness import load_module

from walle.adapters.consul.services import registration
from walle.jobspec.grammar import CHECK_TYPES
from walle.jobspec.parse import parse_spec
from walle.service.params import service_args

consul_service = load_module("walle_consul_service")

HEALTH = {  # per type: the plain check and one with every option set
    "http": [{"type": "http"},
             {"type": "http", "path": "/healthz?full=1", "port": 9090, "interval": "500ms",
              "timeout": "1.5s", "deregister_after": "90s"}],
    "tcp": [{"type": "tcp"},
            {"type": "tcp", "port": 9091, "interval": "1m30s", "timeout": 3,
             "deregister_after": "2h"}],
    "ttl": [{"type": "ttl", "ttl": "30s"},
            {"type": "ttl", "ttl": 0.25 * 3600, "deregister_after": 61.5}],
}


def _spec(health: dict):
    return parse_spec({"name": "web", "kind": "service", "count": 2,
                       "resources": {"cpu": 0.5, "memory": "64M"},
                       "runtime": {"command": "/usr/bin/python3"},
                       "service": {"name": "web-api", "port": 8080, "tags": ["v1"]},
                       "health": health})


def _module_registration(args: dict, monkeypatch) -> dict:
    """Run the module against an agent that has nothing registered; the body it PUTs."""
    sent = []

    def open_url(url, method="GET", data=None, **_kw):
        if method == "PUT":
            sent.append(json.loads(data))
            return _Response("")
        if "/v1/agent/checks" in url:
            return _Response("{}")
        raise HTTPError(url, 404, "Not Found", {}, io.BytesIO(b"unknown service ID"))

    monkeypatch.setattr(consul_service, "open_url", open_url)
    with patch_module_args(args), pytest.raises(SystemExit):
        consul_service.main()
    assert len(sent) == 1
    return sent[0]


class _Response:
    def __init__(self, text):
        self.text = text

    def getcode(self):
        return 200

    def read(self):
        return self.text.encode()


def test_every_health_type_is_covered():
    assert set(HEALTH) == set(CHECK_TYPES)


@pytest.mark.parametrize("address", ["10.77.1.12", "fd00::5"])
@pytest.mark.parametrize("health", [h for kind in CHECK_TYPES for h in HEALTH[kind]],
                         ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_module_and_adapter_register_the_same_check(health, address, monkeypatch, capsys):
    spec = _spec(health)
    args = service_args(spec, 1, address)
    by_module = _module_registration(args, monkeypatch)
    capsys.readouterr()
    by_adapter = registration(args["service_id"], spec.service.name, address, spec.service.port,
                              spec.service.tags, args["meta"], spec.health)
    assert by_adapter["Check"] == by_module["Check"]
    assert by_adapter == by_module
    assert by_module["Check"]["Name"] == f"web-api {health['type']}"


def test_the_check_bodies_say_what_the_spec_says():
    body = registration("web-1", "web-api", "10.77.1.12", 8080, (), {},
                        _spec(HEALTH["http"][1]).health)
    assert body["Check"] == {"Name": "web-api http", "HTTP": "http://10.77.1.12:9090/healthz?full=1",
                             "Interval": "500ms", "Timeout": "1500ms",
                             "DeregisterCriticalServiceAfter": "90s"}
    ttl = registration("web-1", "web-api", "10.77.1.12", 8080, (), {},
                       _spec(HEALTH["ttl"][1]).health)
    assert ttl["Check"] == {"Name": "web-api ttl", "TTL": "900s",
                            "DeregisterCriticalServiceAfter": "61500ms"}


def test_the_shared_translation_takes_the_modules_defaults():
    from walle.adapters.consul.services import walle_consul

    spec = consul_service.ARGUMENT_SPEC
    for option, default in walle_consul.DEFAULTS.items():
        assert spec[option].get("default") == default, option
