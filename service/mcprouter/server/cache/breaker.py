"""A circuit breaker that stops the cache paying Redis timeouts while Redis is down.

    closed ──(failure_threshold consecutive failures)──▶ open
    open ──(reset_timeout elapsed; allow() admits one probe)──▶ half_open
    half_open ──(probe succeeds)──▶ closed
    half_open ──(probe fails)──▶ open (the timeout starts again)

The breaker only keeps state; the caller asks ``allow()`` before a Redis call
and reports the outcome with ``record_success()`` or ``record_failure()``. It is
used from one event loop, so it needs no lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts consecutive Redis failures and short-circuits calls while open."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a closed breaker.

        Args:
            failure_threshold: Consecutive failures that open the breaker.
            reset_timeout: Seconds the breaker stays open before it lets one
                probe call through.
            clock: Monotonic seconds; injected so tests need not sleep.
        """
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must be >= 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half_open"``.

        An open breaker whose ``reset_timeout`` has passed reports
        ``"half_open"``: the next ``allow()`` admits a probe.
        """
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_timeout:
            return "half_open"
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures recorded since the last success."""
        return self._failures

    def allow(self) -> bool:
        """Tell whether a Redis call may be attempted now.

        Closed: always. Open: no, until ``reset_timeout`` has passed; then one
        caller gets ``True`` as the probe. Half-open: no while the probe is out,
        except that a probe whose outcome was never recorded (its caller was
        cancelled) expires after ``reset_timeout`` so the breaker cannot stick.
        """
        if self._state == "closed":
            return True
        now = self._clock()
        if self._state == "open":
            if now - self._opened_at < self.reset_timeout:
                return False
            self._state = "half_open"
            self._probe_started_at = now
            return True
        started = self._probe_started_at
        if started is None or now - started >= self.reset_timeout:
            self._probe_started_at = now
            return True
        return False

    def record_success(self) -> None:
        """A Redis call succeeded: close the breaker."""
        self._state = "closed"
        self._failures = 0
        self._probe_started_at = None

    def record_failure(self) -> None:
        """A Redis call failed: count it, and open the breaker at the threshold."""
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            self._state = "open"
            self._opened_at = self._clock()
            self._probe_started_at = None

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failures={self._failures})"
