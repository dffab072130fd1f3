"""Clocks: the one every toylib measurement uses, and a clock a test or a grader moves by hand.

Every timing in toylib is read from :func:`now` (monotonic, high resolution) so that spans,
load results and experiments can be compared. Components whose behaviour depends on time
(breaker, rate limiter, retry budget, fallback cache, health checker) take a ``clock``
argument; :class:`FakeClock` drives them deterministically in tests and lab graders.
"""
from __future__ import annotations

import math
import time


def now() -> float:
    """The clock every toylib measurement uses (seconds, monotonic, high resolution)."""
    return time.perf_counter()


class FakeClock:
    """A clock moved by hand: ``clock.advance(5)`` or ``clock.t += 5``; call it to read it."""

    def __init__(self, t: float = 0.0):
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
            raise ValueError(f"t must be a finite number of seconds; got {t!r}")
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        if not isinstance(seconds, (int, float)) or seconds != seconds or seconds < 0 \
                or seconds == float("inf"):
            raise ValueError(f"seconds must be a finite number >= 0; got {seconds!r}")
        self.t += seconds
