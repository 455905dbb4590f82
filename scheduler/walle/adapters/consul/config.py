"""Where Consul is and how to talk to it: address, ACL token, TLS.

Precedence: an explicit argument wins over the environment, which wins over the default.
py-consul's own rules differ in two places and we override both by always passing explicit
values to its constructor:
- py-consul reads CONSUL_HTTP_ADDR only when host and port are both None (we always parse it
  ourselves, so a bad value fails here with a message naming the variable);
- py-consul lets CONSUL_HTTP_TOKEN override an explicit token argument (we set the token on
  the client after construction, so an explicit token really wins).
CONSUL_HTTP_TOKEN_FILE (a file holding the token, as the consul CLI reads it) comes after
CONSUL_HTTP_TOKEN; the scheduler role uses it so the token is not in the environment.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from consul.std import Consul

from walle.adapters.consul.errors import ConsulConfigError

DEFAULT_ADDR = "http://127.0.0.1:8500"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class ConsulConfig:
    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int = 8500
    token: str | None = None
    ca_cert: str | None = None  # CA bundle path (CONSUL_CACERT)
    client_cert: str | None = None  # CONSUL_CLIENT_CERT
    client_key: str | None = None  # CONSUL_CLIENT_KEY
    verify: bool = True  # CONSUL_HTTP_SSL_VERIFY
    datacenter: str | None = None
    timeout: float = 10.0  # seconds to connect/answer; blocking queries add their wait

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @classmethod
    def from_env(
        cls,
        addr: str | None = None,
        token: str | None = None,
        *,
        ca_cert: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        verify: bool | None = None,
        datacenter: str | None = None,
        timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
    ) -> ConsulConfig:
        env = os.environ if env is None else env
        raw_addr = addr or env.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDR
        field = "addr" if addr else "CONSUL_HTTP_ADDR"
        ssl_env = _parse_bool(env.get("CONSUL_HTTP_SSL"), "CONSUL_HTTP_SSL")
        scheme, host, port = parse_address(raw_addr, field, default_https=bool(ssl_env))
        if verify is None:
            verify = _parse_bool(env.get("CONSUL_HTTP_SSL_VERIFY"), "CONSUL_HTTP_SSL_VERIFY")
        client_cert = client_cert or env.get("CONSUL_CLIENT_CERT") or None
        client_key = client_key or env.get("CONSUL_CLIENT_KEY") or None
        if bool(client_cert) != bool(client_key):
            raise ConsulConfigError(
                "client_cert and client_key (CONSUL_CLIENT_CERT / CONSUL_CLIENT_KEY) must be "
                "given together"
            )
        if timeout <= 0:
            raise ConsulConfigError(f"timeout must be > 0 seconds, got {timeout}")
        return cls(
            scheme=scheme,
            host=host,
            port=port,
            token=token or env.get("CONSUL_HTTP_TOKEN") or _token_file(env) or None,
            ca_cert=ca_cert or env.get("CONSUL_CACERT") or None,
            client_cert=client_cert,
            client_key=client_key,
            verify=True if verify is None else verify,
            datacenter=datacenter or env.get("CONSUL_DATACENTER") or None,
            timeout=timeout,
        )

    def client(self) -> Consul:
        """A py-consul client built only from this config (never from the environment)."""
        verify: bool | str = self.verify
        if self.verify and self.ca_cert:
            verify = self.ca_cert
        cert = (self.client_cert, self.client_key) if self.client_cert else None
        c = Consul(
            host=self.host,
            port=self.port,
            token=self.token,
            scheme=self.scheme,
            dc=self.datacenter,
            verify=verify,
            cert=cert,
            connections_timeout=self.timeout,
        )
        c.token = self.token  # py-consul prefers CONSUL_HTTP_TOKEN over the argument
        return c


def parse_address(raw: str, field: str, *, default_https: bool = False) -> tuple[str, str, int]:
    """'host:port', 'http://host:port' or 'https://host[:port]' -> (scheme, host, port)."""
    text = raw.strip()
    if "://" not in text:
        text = ("https://" if default_https else "http://") + text
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https"):
        raise ConsulConfigError(
            f"{field}={raw!r}: scheme must be http or https (unix sockets are not supported)"
        )
    try:
        port = parsed.port or 8500
    except ValueError as err:
        raise ConsulConfigError(f"{field}={raw!r}: port is not a number 1..65535") from err
    if not parsed.hostname or parsed.path not in ("", "/"):
        raise ConsulConfigError(
            f"{field}={raw!r}: expected host:port or scheme://host:port, e.g. 127.0.0.1:8500"
        )
    return parsed.scheme, parsed.hostname, port


def _token_file(env: Mapping[str, str]) -> str | None:
    """CONSUL_HTTP_TOKEN_FILE's token (Consul's own convention; below CONSUL_HTTP_TOKEN)."""
    path = env.get("CONSUL_HTTP_TOKEN_FILE")
    return read_token_file(path, "CONSUL_HTTP_TOKEN_FILE") if path else None


def read_token_file(path: str, field: str = "--token-file") -> str:
    """The ACL token in `path` (stripped); ConsulConfigError naming `field` if unreadable or
    empty. The token itself is never part of a message."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as err:
        raise ConsulConfigError(f"{field}={path}: cannot read it ({err.strerror})") from err
    if not token:
        raise ConsulConfigError(f"{field}={path}: the file is empty")
    return token


def _parse_bool(value: str | None, name: str) -> bool | None:
    if value is None or value == "":
        return None
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConsulConfigError(f"{name}={value!r}: expected true or false")
