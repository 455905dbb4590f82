import random

import pytest
import requests
from consul.exceptions import ACLPermissionDenied, BadRequest, ConsulException, NotFound

from walle.adapters.consul import (
    ConsulError,
    ConsulNotFound,
    ConsulUnreachable,
    RetryPolicy,
    call_with_retry,
)


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def failing(errors, result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return fn, calls


POLICY = RetryPolicy(attempts=5, base=0.1, cap=1.0, total=10.0)


def run(fn, policy=POLICY, t=None):
    t = t or FakeTime()
    return call_with_retry(fn, what="read jobs", address="http://127.0.0.1:1", policy=policy,
                           sleep=t.sleep, clock=t.clock, rng=random.Random(7))


def test_connection_errors_and_5xx_are_retried_then_succeed():
    fn, calls = failing([requests.ConnectionError("refused"),
                         ConsulException("500 rpc error")])
    assert run(fn) == "ok"
    assert len(calls) == 3


@pytest.mark.parametrize("err,kind", [
    (BadRequest("400 bad"), ConsulError),
    (ACLPermissionDenied("denied"), ConsulError),
    (NotFound("nope"), ConsulNotFound),
])
def test_4xx_is_never_retried(err, kind):
    fn, calls = failing([err] * 5)
    with pytest.raises(kind):
        run(fn)
    assert len(calls) == 1


def test_gives_up_after_attempts_with_a_message_naming_the_address():
    fn, calls = failing([requests.ConnectionError("refused")] * 10)
    with pytest.raises(ConsulUnreachable) as err:
        run(fn)
    assert len(calls) == 5
    assert "http://127.0.0.1:1" in str(err.value) and "read jobs" in str(err.value)


def test_waits_are_capped_jittered_and_bounded_in_total():
    t = FakeTime()
    policy = RetryPolicy(attempts=50, base=0.5, cap=2.0, total=6.0)
    fn, calls = failing([requests.Timeout("slow")] * 100)
    with pytest.raises(ConsulUnreachable):
        run(fn, policy, t)
    assert all(0 <= s <= 2.0 for s in t.sleeps)
    assert t.now <= 6.0
    assert len(calls) < 50


def test_delays_grow_exponentially_up_to_the_cap():
    policy = RetryPolicy(base=0.1, cap=1.0)
    rng = random.Random(1)
    bounds = [min(1.0, 0.1 * 2**n) for n in range(8)]
    for n, bound in enumerate(bounds):
        assert 0 <= policy.delay(n, rng) <= bound


def test_other_exceptions_pass_through_untouched():
    fn, calls = failing([KeyError("bug")])
    with pytest.raises(KeyError):
        run(fn)
    assert len(calls) == 1


def test_500_refusals_that_retrying_cannot_fix_fail_at_once():
    fn, calls = failing([ConsulException('500 invalid session "abc"')] * 5)
    with pytest.raises(ConsulError, match="invalid session"):
        run(fn)
    assert len(calls) == 1
