"""`walle ui` arguments, and which Host names the console answers to."""

from walle.cli.main import main
from walle.console.server import allowed_hosts_for


def test_a_bad_listen_address_is_refused_with_the_expected_form(capsys):
    for listen in ("nope", "127.0.0.1:http", ":8470", "127.0.0.1:70000"):
        assert main(["ui", "--listen", listen]) == 2
        assert "use HOST:PORT, e.g. 127.0.0.1:8470" in capsys.readouterr().err


def test_loopback_answers_to_its_local_names_only_and_a_wildcard_to_any():
    assert allowed_hosts_for("127.0.0.1", 8470) == frozenset(
        {"127.0.0.1:8470", "localhost:8470", "[::1]:8470"})
    assert allowed_hosts_for("10.77.3.1", 80) == frozenset({"10.77.3.1:80"})
    assert allowed_hosts_for("0.0.0.0", 8470) is None
