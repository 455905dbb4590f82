"""The error a Consul endpoint answers: an HTTP status and Consul's plain-text message."""

from __future__ import annotations


class ConsulError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ConsulError:
    return ConsulError(400, message)


def not_found(message: str) -> ConsulError:
    return ConsulError(404, message)


def rpc_error(message: str) -> ConsulError:
    """Errors raised by a Consul server RPC reach HTTP clients as 500."""
    return ConsulError(500, message)


class PersistError(Exception):
    """A write could not be put on disk: it must not be acknowledged (the answer is a 500)."""
