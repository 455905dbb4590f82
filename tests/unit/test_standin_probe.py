"""The stand-in's HTTP check probe: any URL it is given ends in a check status, never in an
exception that would kill the check's thread (a check URL with whitespace once did)."""

from walle.lab.consul_standin.checkrunner import probe_http


def spec(url: str) -> dict:
    return {"HTTP": url, "Method": "GET", "Header": {}, "Body": "", "Timeout": 1.0}


def test_a_url_with_whitespace_is_critical_not_a_crash():
    status, output = probe_http(spec("http://127.0.0.1:1/a b"))
    assert status == "critical" and "a b" in output


def test_a_url_without_scheme_is_critical():
    status, _ = probe_http(spec("127.0.0.1:1/health"))
    assert status == "critical"
