"""Deadline propagation: the caller's remaining time budget travels with each request.

Following gRPC and the SRE book, what travels is the *remaining time* (not an absolute instant,
since clocks differ between machines). Each hop starts its own clock from it, refuses work that
arrives with no time left, and gives its own downstream calls at most what remains.
"""
from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager

from toylib.core import validate as v

HEADER = "X-Toy-Deadline-Ms"
MAX_INSTANT = 1e15      # seconds on a monotonic clock: millions of years, still a float

_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "toylib_deadline", default=None)


class Deadline:
    """An instant on the local monotonic clock by which the work must be done."""

    def __init__(self, at: float, clock=time.monotonic):
        # A NaN instant would pass every comparison and reach the event loop's timer heap,
        # where it delays every other task's timers too; infinity overflows asyncio's timers.
        self.at = float(v.number("at", at, low=-MAX_INSTANT, high=MAX_INSTANT))
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock

    @classmethod
    def after(cls, seconds: float, clock=time.monotonic) -> Deadline:
        """A deadline ``seconds`` from now (finite, at most a day)."""
        v.seconds("seconds", seconds)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        """Seconds left; negative once expired."""
        return self.at - self.clock()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def to_header(self) -> str:
        return f"{max(0.0, self.remaining()) * 1000.0:.3f}"

    @classmethod
    def from_header(cls, value: str, clock=time.monotonic) -> Deadline:
        try:
            if not isinstance(value, str):
                raise TypeError
            ms = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{HEADER} must be a number of milliseconds; got {value!r}") from None
        try:   # NaN parses as a float; it is as malformed as any other bad header
            v.number(HEADER, ms, low=0, high=v.MAX_SECONDS * 1000.0)
        except TypeError as e:
            raise ValueError(str(e)) from None
        return cls(clock() + ms / 1000.0, clock)

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining() * 1000:.1f} ms)"


def current() -> Deadline | None:
    """The deadline of the request being served now, if any."""
    return _current.get()


@contextmanager
def scope(deadline: Deadline | None):
    """Run the block under ``deadline``: calls made inside inherit it. A tighter outer one wins."""
    if deadline is not None and not isinstance(deadline, Deadline):
        raise TypeError(f"deadline must be a Deadline or None; got {deadline!r}")
    outer = _current.get()
    if deadline is not None and outer is not None and outer.at < deadline.at:
        deadline = outer
    token = _current.set(deadline if deadline is not None else outer)
    try:
        yield deadline
    finally:
        _current.reset(token)
