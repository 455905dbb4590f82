"""Retrying calls to Consul: capped exponential back-off with full jitter, bounded in count and
total time. Only transport failures and 5xx are retried; a 4xx is the caller's fault and
retrying it would only repeat it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
from consul.exceptions import (
    ACLDisabled,
    ACLPermissionDenied,
    BadRequest,
    ClientError,
    ConsulException,
    NotFound,
)

from walle.adapters.consul.errors import (
    ConsulDenied,
    ConsulError,
    ConsulNotFound,
    ConsulUnreachable,
)

T = TypeVar("T")

_CLIENT_ERRORS = (BadRequest, ACLDisabled, ACLPermissionDenied, NotFound, ClientError)


# Substrings of 500 answers that are refusals, not outages (session and catalog validation).
PERMANENT_500 = ("invalid session", "critical state", "missing node registration",
                 "invalid lock delay", "invalid session ttl", "permission denied")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # total tries, the first included
    base: float = 0.2  # seconds before the second try (before jitter)
    cap: float = 5.0  # no single wait is longer
    total: float = 30.0  # give up once this much time has passed

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.base < 0 or self.cap < 0 or self.total < 0:
            raise ValueError("RetryPolicy.base, cap and total must be >= 0")

    def delay(self, retry: int, rng: random.Random) -> float:
        """Wait before retry number `retry` (0-based): full jitter in [0, min(cap, base*2^n)]."""
        return rng.uniform(0.0, min(self.cap, self.base * (2**retry)))


def is_retryable(err: BaseException) -> bool:
    if isinstance(err, requests.ConnectionError | requests.Timeout):
        return True
    if isinstance(err, _CLIENT_ERRORS):
        return False
    # py-consul raises a bare ConsulException "<code> <body>" for 5xx (and for bad JSON,
    # which we do not retry). Consul also answers 500 for some refusals that will not change
    # by retrying; those fail at once.
    text = str(err)
    if type(err) is not ConsulException or text[:1] != "5":
        return False
    return not any(marker in text.lower() for marker in PERMANENT_500)


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    address: str,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    rng = rng or random.Random()
    start = clock()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as err:  # classified just below; anything unknown is re-raised
            if not is_retryable(err):
                if isinstance(err, NotFound):
                    raise ConsulNotFound(f"{what} at {address}: not found ({err})") from err
                if isinstance(err, ACLPermissionDenied):
                    raise ConsulDenied(f"{what} at {address}: the ACL token was refused "
                                       f"({err})") from err
                if isinstance(err, ConsulException):
                    raise ConsulError(f"{what} at {address}: {err}") from err
                raise
            elapsed = clock() - start
            wait = policy.delay(attempt, rng)
            last = attempt + 1 == policy.attempts
            if last or elapsed + wait > policy.total:
                raise ConsulUnreachable(address, what, attempt + 1, elapsed, err) from err
            sleep(wait)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
