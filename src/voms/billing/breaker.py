"""A circuit breaker and bulkhead per charging system, so a dead IN holds no worker.

Closed, calls go through; after ``failures`` calls in a row without a definite answer
(timeouts, dropped connections) it opens, and calls are refused at once for
``reset_s`` seconds; then it lets one trial call through (half open), which closes it
again on a definite answer or opens it for another ``reset_s``. Whatever its state, at
most ``max_in_flight`` calls wait on the charging system at once: the rest are refused
at once, so a slow IN never takes every redemption thread.
"""

import threading
import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Refused(Exception):
    """The breaker is open, or as many calls as allowed are already waiting."""


class Breaker:
    """Thread-safe; :meth:`admit` before each call, :meth:`record` after it, always."""

    def __init__(
        self,
        failures: int,
        reset_s: float,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failed_in_a_row = 0
        self._opened_at = 0.0
        self._in_flight = 0
        self._trial_out = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state

    def refusing(self) -> bool:
        """Open and not yet due for a trial: :meth:`admit` would refuse."""
        with self._lock:
            return (
                self._state is BreakerState.OPEN and self._clock() - self._opened_at < self.reset_s
            )

    def admit(self) -> None:
        """Take a place for one call, or raise :class:`Refused`."""
        with self._lock:
            if self._state is BreakerState.OPEN:
                if self._clock() - self._opened_at < self.reset_s:
                    raise Refused("the charging system is not answering (circuit open)")
                self._state = BreakerState.HALF_OPEN
                self._trial_out = False
            if self._state is BreakerState.HALF_OPEN:
                if self._trial_out:
                    raise Refused("the charging system is being tried again (circuit half open)")
                self._trial_out = True
            if self._in_flight >= self.max_in_flight:
                if self._state is BreakerState.HALF_OPEN:
                    self._trial_out = False
                raise Refused("too many calls are waiting on the charging system")
            self._in_flight += 1

    def record(self, answered: bool) -> None:
        """The admitted call ended; ``answered``: with a definite answer."""
        with self._lock:
            self._in_flight -= 1
            if answered:
                self._failed_in_a_row = 0
                self._state = BreakerState.CLOSED
                return
            self._failed_in_a_row += 1
            if self._state is BreakerState.HALF_OPEN or self._failed_in_a_row >= self.failures:
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
