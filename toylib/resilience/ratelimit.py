"""An edge rate limiter: a token bucket in front of a service.

The bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second; a request
takes one token or is turned away at once. Turning work away at the edge is cheaper than
accepting it and failing deep inside: the rejected request costs a comparison, not a chain of
calls. The long-run admitted rate is ``rate``; ``burst`` is how much short-term excess is
allowed. The clock is injectable so labs and tests can step time instead of sleeping.
"""
from __future__ import annotations

import time
from typing import Callable

from toylib.core import validate as v

# Floats drift when refills are summed (0.1 s at 10/s may give 0.9999999); forgive the drift.
_EPS = 1e-9


class RateLimiter:
    """Token bucket: ``rate`` tokens per second, at most ``burst`` stored, starts full."""

    def __init__(self, rate: float, burst: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = v.positive("rate", rate, high=v.MAX_RATE)
        self.burst = v.number("burst", burst, low=1, high=v.MAX_ITEMS)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock
        self.tokens = float(self.burst)
        self.admitted = 0
        self.rejected = 0
        self._last = clock()

    def _refill(self) -> None:
        now = self.clock()
        # A clock that steps backwards must not drain the bucket.
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if available now and return True; otherwise take nothing, False."""
        tokens = v.number("tokens", tokens, low=0, low_open=True, high=self.burst)
        self._refill()
        if self.tokens + _EPS >= tokens:
            self.tokens = max(0.0, self.tokens - tokens)
            self.admitted += 1
            return True
        self.rejected += 1
        return False

    def __repr__(self) -> str:
        return (f"RateLimiter(rate={self.rate}/s, burst={self.burst}, "
                f"admitted={self.admitted}, rejected={self.rejected})")
