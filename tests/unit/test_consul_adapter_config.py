import pytest

from walle.adapters.consul import ConsulConfig, ConsulConfigError, parse_address


def test_defaults_to_local_agent_over_http():
    cfg = ConsulConfig.from_env(env={})
    assert (cfg.scheme, cfg.host, cfg.port, cfg.token) == ("http", "127.0.0.1", 8500, None)
    assert cfg.address == "http://127.0.0.1:8500"


def test_environment_is_read():
    env = {"CONSUL_HTTP_ADDR": "https://10.77.0.1:8501", "CONSUL_HTTP_TOKEN": "t-env",
           "CONSUL_CACERT": "/ca.pem", "CONSUL_CLIENT_CERT": "/c.pem",
           "CONSUL_CLIENT_KEY": "/k.pem", "CONSUL_HTTP_SSL_VERIFY": "false"}
    cfg = ConsulConfig.from_env(env=env)
    assert cfg.address == "https://10.77.0.1:8501"
    assert cfg.token == "t-env"
    assert (cfg.ca_cert, cfg.client_cert, cfg.client_key) == ("/ca.pem", "/c.pem", "/k.pem")
    assert cfg.verify is False


def test_explicit_arguments_win_over_environment():
    env = {"CONSUL_HTTP_ADDR": "10.77.0.1:8500", "CONSUL_HTTP_TOKEN": "t-env"}
    cfg = ConsulConfig.from_env("127.0.0.2:9500", "t-arg", verify=True, env=env)
    assert cfg.address == "http://127.0.0.2:9500"
    assert cfg.token == "t-arg"


def test_explicit_token_wins_in_the_client_even_with_env_token(monkeypatch):
    # py-consul alone would prefer CONSUL_HTTP_TOKEN over its token argument.
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "t-env")
    client = ConsulConfig(token="t-arg").client()
    assert client.prepare_headers() == {"X-Consul-Token": "t-arg"}


def test_consul_http_ssl_makes_bare_addresses_https():
    cfg = ConsulConfig.from_env(env={"CONSUL_HTTP_ADDR": "consul:8501", "CONSUL_HTTP_SSL": "1"})
    assert cfg.scheme == "https"


@pytest.mark.parametrize("raw,expected", [
    ("127.0.0.1:8500", ("http", "127.0.0.1", 8500)),
    ("http://localhost", ("http", "localhost", 8500)),
    ("https://[::1]:8501", ("https", "::1", 8501)),
])
def test_parse_address_forms(raw, expected):
    assert parse_address(raw, "addr") == expected


@pytest.mark.parametrize("raw,fragment", [
    ("unix:///run/consul.sock", "scheme"),
    ("127.0.0.1:notaport", "port"),
    ("http://host:8500/v1", "host:port"),
])
def test_bad_address_names_the_field(raw, fragment):
    with pytest.raises(ConsulConfigError) as err:
        ConsulConfig.from_env(env={"CONSUL_HTTP_ADDR": raw})
    assert "CONSUL_HTTP_ADDR" in str(err.value) and fragment in str(err.value)


def test_bad_bool_and_half_client_cert_are_refused():
    with pytest.raises(ConsulConfigError, match="CONSUL_HTTP_SSL_VERIFY"):
        ConsulConfig.from_env(env={"CONSUL_HTTP_SSL_VERIFY": "maybe"})
    with pytest.raises(ConsulConfigError, match="CONSUL_CLIENT_KEY"):
        ConsulConfig.from_env(env={"CONSUL_CLIENT_CERT": "/c.pem"})


def test_token_file_is_read_when_no_token_is_given(tmp_path):
    # Consul's CONSUL_HTTP_TOKEN_FILE: the scheduler role names a root-only file there, so
    # the token is never in the environment its children (ansible, ssh) inherit.
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert ConsulConfig.from_env(env={"CONSUL_HTTP_TOKEN_FILE": str(path)}).token == "from-file"
    both = {"CONSUL_HTTP_TOKEN_FILE": str(path), "CONSUL_HTTP_TOKEN": "from-env"}
    assert ConsulConfig.from_env(env=both).token == "from-env"
    assert ConsulConfig.from_env(token="explicit", env=both).token == "explicit"


@pytest.mark.parametrize("content", [None, "  \n"])
def test_unreadable_or_empty_token_file_fails_naming_the_variable(tmp_path, content):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConsulConfigError, match="CONSUL_HTTP_TOKEN_FILE"):
        ConsulConfig.from_env(env={"CONSUL_HTTP_TOKEN_FILE": str(path)})
