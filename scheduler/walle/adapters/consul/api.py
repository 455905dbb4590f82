"""One connection to Consul: the py-consul client plus the retry policy every call goes through."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from consul.exceptions import ConsulException
from consul.std import Consul

from walle.adapters.consul.config import ConsulConfig
from walle.adapters.consul.errors import ConsulError
from walle.adapters.consul.retry import RetryPolicy, call_with_retry
from walle.jobspec.grammar import grammar

T = TypeVar("T")


class ConsulApi:
    def __init__(
        self,
        config: ConsulConfig | None = None,
        retry: RetryPolicy | None = None,
        *,
        client: Consul | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.config = config or ConsulConfig.from_env()
        self.retry = retry or RetryPolicy()
        self.client = client or self.config.client()
        self._sleep = sleep
        self._rng = random.Random()

    @property
    def address(self) -> str:
        return self.config.address

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one Consul call under the retry policy; errors come back as Walle's types."""
        return call_with_retry(
            fn, what=what, address=self.address, policy=self.retry, sleep=self._sleep,
            rng=self._rng,
        )

    def raw(self, method: str, path: str, *, params: list | None = None, data: str = "",
            what: str | None = None) -> tuple[int, Any]:
        """A request py-consul does not wrap well (it drops the token or hides 409 bodies):
        returns (status, decoded JSON or text) for 2xx/4xx; 5xx and transport errors retry."""
        http = self.client.http
        headers = self.client.prepare_headers()
        send = getattr(http, method)

        body = {} if method == "get" else {"data": data}  # py-consul's get takes no body

        def once() -> tuple[int, Any]:
            resp = send(lambda r: r, path, params=params or [], headers=headers, **body)
            if resp.code >= 500:
                raise ConsulException(f"{resp.code} {resp.body}")
            return resp.code, _decode(resp.body)

        return self.call(what or f"{method.upper()} {path}", once)

    def get_indexed(self, path: str, params: list | None = None, what: str | None = None
                    ) -> tuple[int, Any]:
        """GET a blocking endpoint with this client's token -> (X-Consul-Index, JSON).
        For endpoints whose py-consul wrapper drops the token (event list)."""
        http = self.client.http
        headers = self.client.prepare_headers()

        def once() -> tuple[int, Any]:
            resp = http.get(lambda r: r, path, params=params or [], headers=headers)
            if resp.code >= 500:
                raise ConsulException(f"{resp.code} {resp.body}")
            if resp.code != 200:
                raise ConsulError(f"GET {path} at {self.address} answered {resp.code}: "
                                  f"{resp.body}")
            return int(resp.headers.get("X-Consul-Index", 0)), _decode(resp.body)

        return self.call(what or f"GET {path}", once)


def _decode(body: str) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


# Seconds -> a duration Consul reads ("2s", "500ms"): the node grammar's one formatter.
go_duration = grammar.format_duration
