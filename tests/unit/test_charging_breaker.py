"""The circuit breaker and bulkhead of a charging system, on a hand-moved clock."""

import pytest

from tests.factories import Clock
from voms.billing.breaker import Breaker, BreakerState, Refused


def test_failures_in_a_row_open_the_circuit_until_a_trial_call_answers() -> None:
    clock = Clock()
    breaker = Breaker(failures=3, reset_s=30, max_in_flight=10, clock=clock)
    for _ in range(2):
        breaker.admit()
        breaker.record(answered=False)
    breaker.admit()
    breaker.record(answered=True)  # an answer in between: the count starts again
    for _ in range(3):
        breaker.admit()
        breaker.record(answered=False)
    assert breaker.state is BreakerState.OPEN
    assert breaker.refusing()
    with pytest.raises(Refused):
        breaker.admit()
    clock.now += 30
    assert not breaker.refusing()
    breaker.admit()  # the one trial call
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(Refused):
        breaker.admit()  # no second call while the trial is out
    breaker.record(answered=True)
    assert breaker.state is BreakerState.CLOSED
    breaker.admit()
    breaker.record(answered=True)


def test_a_failed_trial_opens_the_circuit_again() -> None:
    clock = Clock()
    breaker = Breaker(failures=1, reset_s=10, max_in_flight=10, clock=clock)
    breaker.admit()
    breaker.record(answered=False)
    clock.now += 10
    breaker.admit()
    breaker.record(answered=False)
    assert breaker.state is BreakerState.OPEN
    clock.now += 9
    with pytest.raises(Refused):
        breaker.admit()


def test_no_more_calls_wait_than_allowed() -> None:
    breaker = Breaker(failures=5, reset_s=10, max_in_flight=2, clock=Clock())
    breaker.admit()
    breaker.admit()
    with pytest.raises(Refused):
        breaker.admit()
    breaker.record(answered=True)
    breaker.admit()
