"""Errors the Consul adapter raises: Walle's own types, so callers never catch py-consul's."""

from __future__ import annotations


class ConsulError(Exception):
    """Consul answered, but not with what we asked for (4xx, bad payload)."""


class ConsulUnreachable(ConsulError):
    """Consul did not answer (connection refused, timeout, 5xx) after every retry."""

    def __init__(self, address: str, what: str, attempts: int, elapsed: float, cause: object):
        self.address = address
        self.what = what
        self.attempts = attempts
        self.elapsed = elapsed
        super().__init__(
            f"Consul at {address} is unreachable: {what} failed {attempts} time(s) over "
            f"{elapsed:.1f}s (last error: {cause}). Check that the agent runs and that "
            f"CONSUL_HTTP_ADDR / --consul-addr points at it."
        )


class ConsulNotFound(ConsulError):
    """Consul answered 404 where the object must exist (e.g. renewing an unknown session)."""


class ConsulDenied(ConsulError):
    """Consul refused the request's ACL token (403: no such token, or it lacks the
    permission)."""


class ConsulConfigError(ConsulError, ValueError):
    """A setting (argument or environment variable) is malformed; the message names it."""


class NotLeader(ConsulError):
    """A write that must prove leadership was attempted without a live session."""
