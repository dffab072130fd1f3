"""A circuit breaker after resilience4j's CircuitBreakerStateMachine.

A breaker stops a caller from spending its threads, sockets and patience on a dependency that
is already failing, and gives that dependency room to recover. The code has the shape of the
state machine: one small class per state (``Closed``, ``Open``, ``HalfOpen``), each owning its
metrics and its rule for leaving. The breaker itself only holds the current state, the clock
and the event log, so a chapter can show each rule on its own and plot a timeline from events.

Semantics followed (resilience4j defaults as the defaults here):

* Closed keeps a sliding window (the last ``window_size`` calls, or the calls of the last
  ``window_size`` seconds). Rates are evaluated after every recorded outcome; below
  ``minimum_calls`` (capped at the window size for a count window) it never trips. It opens
  when failure rate >= threshold or slow-call rate >= threshold; a call is slow when its
  duration is strictly greater than ``slow_call_duration``.
* Open rejects calls without attempting them (:class:`CallNotPermitted`). It leaves lazily:
  the first call strictly after ``opened_at + wait_in_open`` moves it to half-open (resilience4j
  compares with ``Instant.isAfter``). Nothing happens without a call.
* HalfOpen admits exactly ``permitted_in_half_open`` trial calls and gives its verdict only
  when all of their outcomes are in: rate >= threshold -> open, else -> closed.
* Exceptions in ``ignore`` count as neither outcome and hand back a half-open permit;
  exceptions outside ``record`` count as successes.

Where the toy differs from resilience4j: the time window keeps exact timestamps instead of
one-second buckets; there is no automatic open->half-open timer, no maximum wait in half-open
(a trial call that never finishes keeps the breaker half-open), and no disabled, metrics-only
or forced-open states. It is not thread-safe: it is meant for one asyncio event loop.
:meth:`CircuitBreaker.consecutive` configures pybreaker's simpler model.
"""
from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Callable

from toylib.core import validate as v

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
MAX_WINDOW = 1_000_000      # calls a count window (or the minimum, or half-open) may span

#: Every transition the model allows; anything else is a bug (``reset`` is logged separately).
TRANSITIONS = frozenset({(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN),
                         (HALF_OPEN, CLOSED)})


class CallNotPermitted(Exception):
    """The breaker refused the call; the wrapped function was not attempted."""

    def __init__(self, breaker: str, state: str):
        super().__init__(f"circuit breaker {breaker!r} is {state}; call not permitted")
        self.breaker = breaker
        self.state = state


@dataclass(frozen=True)
class BreakerEvent:
    """One line of the breaker's log.

    ``kind`` is one of success, error, ignored_error, not_permitted, state_transition,
    failure_rate_exceeded, slow_call_rate_exceeded, reset. ``state`` is the breaker's state
    after the event, so a plot of ``state`` against ``time`` is the state timeline.
    """
    time: float
    breaker: str
    kind: str
    state: str
    from_state: str | None = None
    duration: float | None = None
    failure_rate: float | None = None
    slow_call_rate: float | None = None
    error: str | None = None


# -- sliding windows ----------------------------------------------------------------------------

class _CountWindow:
    """The outcomes of the last ``size`` calls."""

    def __init__(self, size: int):
        self.size = size
        self._outcomes: deque[tuple[bool, bool]] = deque()
        self.failures = self.slow = 0

    def add(self, now: float, failed: bool, slow: bool) -> None:
        self._outcomes.append((failed, slow))
        self.failures += failed
        self.slow += slow
        if len(self._outcomes) > self.size:
            old_failed, old_slow = self._outcomes.popleft()
            self.failures -= old_failed
            self.slow -= old_slow

    def calls(self, now: float) -> int:
        return len(self._outcomes)


class _TimeWindow:
    """The outcomes of the calls recorded in the last ``size`` seconds (``now - t < size``)."""

    def __init__(self, size: float):
        self.size = size
        self._outcomes: deque[tuple[float, bool, bool]] = deque()
        self.failures = self.slow = 0

    def add(self, now: float, failed: bool, slow: bool) -> None:
        self._outcomes.append((now, failed, slow))
        self.failures += failed
        self.slow += slow
        self._evict(now)

    def calls(self, now: float) -> int:
        self._evict(now)
        return len(self._outcomes)

    def _evict(self, now: float) -> None:
        while self._outcomes and now - self._outcomes[0][0] >= self.size:
            _, old_failed, old_slow = self._outcomes.popleft()
            self.failures -= old_failed
            self.slow -= old_slow


@dataclass(frozen=True)
class Verdict:
    """What the metrics say after an outcome. Rates are percentages, None below the minimum."""
    calls: int
    failure_rate: float | None
    slow_call_rate: float | None
    failure_exceeded: bool
    slow_exceeded: bool

    @property
    def below_minimum(self) -> bool:
        return self.failure_rate is None

    @property
    def exceeded(self) -> bool:
        return self.failure_exceeded or self.slow_exceeded


class _Metrics:
    """A window plus the thresholds that judge it."""

    def __init__(self, window, minimum_calls: int, cfg: CircuitBreaker):
        self.window = window
        self.minimum_calls = minimum_calls
        self.cfg = cfg

    def record(self, now: float, duration: float, failed: bool) -> Verdict:
        limit = self.cfg.slow_call_duration
        self.window.add(now, failed, limit is not None and duration > limit)
        return self.verdict(now)

    def verdict(self, now: float) -> Verdict:
        calls = self.window.calls(now)
        if calls == 0 or calls < self.minimum_calls:
            return Verdict(calls, None, None, False, False)
        failed, slow = self.window.failures, self.window.slow
        # Compare by multiplying, not dividing, so that "equal to the threshold" stays exact.
        return Verdict(calls, 100.0 * failed / calls, 100.0 * slow / calls,
                       failed * 100.0 >= self.cfg.failure_rate_threshold * calls,
                       slow * 100.0 >= self.cfg.slow_call_rate_threshold * calls)


# -- the states ---------------------------------------------------------------------------------

class _State:
    name = "?"

    def __init__(self, cb: CircuitBreaker, metrics: _Metrics):
        self.cb = cb
        self.metrics = metrics

    def on_time(self, now: float) -> None:
        """Leave the state because time has passed (only Open does, and only when asked)."""

    def try_acquire(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        """Hand back a permit that was not used for a recorded outcome."""

    def record(self, now: float, duration: float, failed: bool) -> None:
        raise NotImplementedError


class Closed(_State):
    """Every call goes through; the window decides when to trip."""
    name = CLOSED

    def __init__(self, cb: CircuitBreaker):
        super().__init__(cb, cb._closed_metrics())

    def try_acquire(self) -> bool:
        return True

    def record(self, now, duration, failed):
        verdict = self.metrics.record(now, duration, failed)
        if verdict.exceeded:
            self.cb._trip(self, verdict, now)


class Open(_State):
    """Nothing goes through until the wait is over; then the next call finds the door ajar."""
    name = OPEN

    def __init__(self, cb: CircuitBreaker, now: float, metrics: _Metrics):
        super().__init__(cb, metrics)
        self.opened_at = now
        self.retry_after = now + cb.wait_in_open

    def on_time(self, now):
        if now > self.retry_after:
            self.cb._move(self, HalfOpen(self.cb), now)

    def try_acquire(self) -> bool:
        return False

    def record(self, now, duration, failed):
        # A call admitted before the trip that ends now: recorded, but it cannot reopen an
        # open breaker nor close it.
        self.metrics.record(now, duration, failed)


class HalfOpen(_State):
    """A fixed number of trial calls; the verdict waits until all of them have reported."""
    name = HALF_OPEN

    def __init__(self, cb: CircuitBreaker):
        n = cb.permitted_in_half_open
        super().__init__(cb, _Metrics(_CountWindow(n), n, cb))
        self.permits = n

    def try_acquire(self) -> bool:
        if self.permits > 0:
            self.permits -= 1
            return True
        return False

    def release(self) -> None:
        self.permits = min(self.permits + 1, self.cb.permitted_in_half_open)

    def record(self, now, duration, failed):
        verdict = self.metrics.record(now, duration, failed)
        if verdict.below_minimum:
            return
        if verdict.exceeded:
            self.cb._trip(self, verdict, now)
        else:
            self.cb._move(self, Closed(self.cb), now)


# -- the breaker --------------------------------------------------------------------------------

def _exception_types(param: str, value) -> tuple:
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in value):
        raise TypeError(f"{param} must be a tuple of exception classes; got {value!r}")
    return value


class CircuitBreaker:
    """A count- or time-window circuit breaker with resilience4j's defaults.

    Use ``await breaker.call(fn, *args)`` around coroutine functions, or script outcomes with
    ``try_acquire()`` / ``on_success(d)`` / ``on_error(d, exc)`` / ``release()`` and a fake
    ``clock`` (any callable returning seconds).
    """

    def __init__(self, name: str, *, failure_rate_threshold: float = 50.0,
                 slow_call_rate_threshold: float = 100.0, slow_call_duration: float | None = 60.0,
                 window_type: str = "count", window_size: float = 100, minimum_calls: int = 100,
                 wait_in_open: float = 60.0, permitted_in_half_open: int = 10,
                 record=(Exception,), ignore=(), clock: Callable[[], float] = time.monotonic):
        self.name = v.name("name", name)
        self.failure_rate_threshold = v.number("failure_rate_threshold", failure_rate_threshold,
                                               low=0, low_open=True, high=100)
        self.slow_call_rate_threshold = v.number("slow_call_rate_threshold",
                                                 slow_call_rate_threshold,
                                                 low=0, low_open=True, high=100)
        # None means "no call is ever slow" (pybreaker has no notion of slowness).
        self.slow_call_duration = v.optional(v.non_negative, "slow_call_duration",
                                             slow_call_duration)
        self.window_type = v.one_of("window_type", window_type, ("count", "time"))
        # a count window holds one entry per call; a time window spans at most a day
        self.window_size = v.positive("window_size", window_size,
                                      integer=window_type == "count",
                                      high=MAX_WINDOW if window_type == "count"
                                      else v.MAX_SECONDS)
        minimum_calls = v.positive("minimum_calls", minimum_calls, integer=True,
                                   high=MAX_WINDOW)
        # A count window can never hold more than window_size calls, so a larger minimum
        # would mean "never trip"; resilience4j caps it, and so do we.
        self.minimum_calls = (min(minimum_calls, self.window_size) if window_type == "count"
                              else minimum_calls)
        self.wait_in_open = v.seconds("wait_in_open", wait_in_open)
        self.permitted_in_half_open = v.positive("permitted_in_half_open",
                                                 permitted_in_half_open, integer=True,
                                                 high=MAX_WINDOW)
        self.record = _exception_types("record", record)
        self.ignore = _exception_types("ignore", ignore)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock
        self.events: list[BreakerEvent] = []
        self._listeners: list[Callable[[BreakerEvent], None]] = []
        self._state: _State = Closed(self)

    @classmethod
    def consecutive(cls, name: str, *, fail_max: int = 5, reset_timeout: float = 60.0,
                    record=(Exception,), ignore=(), clock=time.monotonic) -> CircuitBreaker:
        """pybreaker's model as a configuration: trip after ``fail_max`` consecutive failures.

        A count window of ``fail_max`` calls at a 100 % threshold is full of failures exactly
        when the last ``fail_max`` calls all failed, so any success "resets the counter". One
        trial call in half-open gives success_threshold 1 and "one failure reopens".
        Remaining differences: pybreaker lets the first call *at* opened_at + reset_timeout
        through (we wait until strictly after), raises CircuitBreakerError from the tripping
        call (we re-raise its own error), and has no "ignored" exceptions (its ``exclude`` is
        our "not in ``record``": counted as a success).
        """
        fail_max = v.positive("fail_max", fail_max, integer=True, high=MAX_WINDOW)
        reset_timeout = v.seconds("reset_timeout", reset_timeout)
        return cls(name, failure_rate_threshold=100.0, slow_call_rate_threshold=100.0,
                   slow_call_duration=None, window_type="count", window_size=fail_max,
                   minimum_calls=fail_max, wait_in_open=reset_timeout, permitted_in_half_open=1,
                   record=record, ignore=ignore, clock=clock)

    # -- what callers use -----------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The current state's name. Reading it never moves the breaker (transitions are lazy)."""
        return self._state.name

    async def call(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` (awaiting it if it returns an awaitable) under the breaker.

        Raises :class:`CallNotPermitted` without calling ``fn`` when the breaker refuses.
        The outcome is recorded in the state that admitted the call, so a call that outlives
        its state is counted there and cannot move the breaker.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {fn!r}")
        state = self._acquire()
        start = self.clock()
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            self._outcome(state, self.clock() - start, exc)
            raise
        except BaseException:
            # Cancelled: neither success nor failure, and the half-open permit must come back
            # or the breaker would wait forever for a verdict.
            self._release(state)
            raise
        self._outcome(state, self.clock() - start, None)
        return result

    def try_acquire(self) -> bool:
        """Ask for a permit; False means "do not attempt the call" (and is logged)."""
        try:
            self._acquire()
        except CallNotPermitted:
            return False
        return True

    def on_success(self, duration: float) -> None:
        """Record a successful call that took ``duration`` seconds."""
        self._outcome(self._state, v.non_negative("duration", duration), None)

    def on_error(self, duration: float, exc: BaseException) -> None:
        """Record a call that raised ``exc`` (classified as recorded, ignored or success)."""
        if not isinstance(exc, BaseException):
            raise TypeError(f"exc must be an exception instance; got {exc!r}")
        self._outcome(self._state, v.non_negative("duration", duration), exc)

    def release(self) -> None:
        """Give back a permit without recording an outcome (an ignored or abandoned call)."""
        self._release(self._state)

    def reset(self) -> None:
        """Back to a fresh closed state, forgetting all metrics (resilience4j's reset)."""
        before = self._state.name
        self._state = Closed(self)
        self._emit("reset", self.clock(), from_state=before)

    def add_listener(self, callback: Callable[[BreakerEvent], None]) -> None:
        """Call ``callback(event)`` for every future event."""
        if not callable(callback):
            raise TypeError(f"callback must be callable; got {callback!r}")
        self._listeners.append(callback)

    def snapshot(self) -> Verdict:
        """The current state's metrics, as the rule for leaving it sees them."""
        return self._state.metrics.verdict(self.clock())

    def events_df(self):
        """The event log as a pandas DataFrame (one row per event, columns as BreakerEvent)."""
        import pandas as pd
        return pd.DataFrame([asdict(e) for e in self.events],
                            columns=[f.name for f in fields(BreakerEvent)])

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state!r})"

    # -- what the states use --------------------------------------------------------------------

    def _closed_metrics(self) -> _Metrics:
        window = (_CountWindow(self.window_size) if self.window_type == "count"
                  else _TimeWindow(self.window_size))
        return _Metrics(window, self.minimum_calls, self)

    def _acquire(self) -> _State:
        now = self.clock()
        self._state.on_time(now)
        state = self._state
        if not state.try_acquire():
            self._emit("not_permitted", now)
            raise CallNotPermitted(self.name, state.name)
        return state

    def _release(self, state: _State) -> None:
        if state is self._state:
            state.release()

    def _outcome(self, state: _State, duration: float, exc: BaseException | None) -> None:
        now = self.clock()
        error = None if exc is None else f"{type(exc).__name__}: {exc}"
        if exc is not None and isinstance(exc, self.ignore):
            self._emit("ignored_error", now, duration=duration, error=error)
            self._release(state)
            return
        failed = exc is not None and isinstance(exc, self.record)
        self._emit("error" if failed else "success", now, duration=duration, error=error)
        state.record(now, duration, failed)

    def _trip(self, state: _State, verdict: Verdict, now: float) -> None:
        if state is not self._state:
            return
        if verdict.failure_exceeded:
            self._emit("failure_rate_exceeded", now, failure_rate=verdict.failure_rate)
        if verdict.slow_exceeded:
            self._emit("slow_call_rate_exceeded", now, slow_call_rate=verdict.slow_call_rate)
        self._move(state, Open(self, now, state.metrics), now)

    def _move(self, state: _State, new: _State, now: float) -> None:
        # Only the current state may leave; a stale one (a late outcome) changes nothing.
        if state is not self._state:
            return
        assert (state.name, new.name) in TRANSITIONS, (state.name, new.name)
        self._state = new
        self._emit("state_transition", now, from_state=state.name)

    def _emit(self, kind: str, now: float, **details) -> None:
        event = BreakerEvent(now, self.name, kind, self._state.name, **details)
        self.events.append(event)
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:
                # As in resilience4j: a broken listener must not break the protected call.
                log.exception("listener of circuit breaker %r failed", self.name)
