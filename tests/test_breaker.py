"""The circuit breaker against resilience4j's rules (one test per rule) and against pybreaker.

Every test scripts time with a fake clock; nothing sleeps.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from unittest import mock

import pybreaker
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toylib.core.clock import FakeClock

from toylib.resilience.breaker import (CLOSED, HALF_OPEN, OPEN, TRANSITIONS, BreakerEvent, CallNotPermitted,
                            CircuitBreaker)




class Boom(Exception):
    """A recorded failure."""


def breaker(clock=None, **kw) -> CircuitBreaker:
    return CircuitBreaker("dep", clock=clock or FakeClock(), **kw)


def outcomes(cb: CircuitBreaker, pattern: str, duration: float = 0.0) -> list[str]:
    """Script calls: 'F' failure, 'S' success, 'I' ignored; returns the state after each."""
    states = []
    for ch in pattern:
        assert cb.try_acquire(), f"call refused in state {cb.state}"
        if ch == "S":
            cb.on_success(duration)
        elif ch == "F":
            cb.on_error(duration, Boom())
        else:
            cb.on_error(duration, KeyError("ignored"))
        states.append(cb.state)
    return states


def trip(cb: CircuitBreaker) -> None:
    while cb.state == CLOSED:
        assert cb.try_acquire()
        cb.on_error(0.0, Boom())
    assert cb.state == OPEN


def transitions(cb: CircuitBreaker) -> list[tuple[str, str]]:
    return [(e.from_state, e.state) for e in cb.events if e.kind == "state_transition"]


# -- defaults -----------------------------------------------------------------------------------

def test_defaults_are_resilience4j_defaults():
    cb = CircuitBreaker("dep")
    assert (cb.failure_rate_threshold, cb.slow_call_rate_threshold, cb.slow_call_duration) \
        == (50.0, 100.0, 60.0)
    assert (cb.window_type, cb.window_size, cb.minimum_calls) == ("count", 100, 100)
    assert (cb.wait_in_open, cb.permitted_in_half_open) == (60.0, 10)
    assert cb.state == CLOSED


# -- closed: minimum calls, thresholds, slow calls ----------------------------------------------

def test_below_minimum_calls_never_trips_even_at_100_percent_failures():
    cb = breaker(window_size=10, minimum_calls=5)
    assert outcomes(cb, "FFFF") == [CLOSED] * 4
    assert cb.snapshot().failure_rate is None          # not even evaluated
    assert outcomes(cb, "F") == [OPEN]                  # the 5th call reaches the minimum


def test_minimum_calls_is_capped_at_count_window_size():
    cb = breaker(window_size=5, minimum_calls=100)
    assert cb.minimum_calls == 5
    assert outcomes(cb, "FFFFF")[-1] == OPEN


def test_minimum_calls_is_not_capped_for_time_window():
    clock = FakeClock()
    cb = breaker(clock, window_type="time", window_size=10, minimum_calls=20)
    assert outcomes(cb, "F" * 19) == [CLOSED] * 19
    assert outcomes(cb, "F") == [OPEN]


def test_rates_are_evaluated_after_every_outcome_not_when_the_window_fills():
    cb = breaker(window_size=100, minimum_calls=4)
    assert outcomes(cb, "FFFF") == [CLOSED, CLOSED, CLOSED, OPEN]


def test_failure_rate_equal_to_threshold_trips():
    cb = breaker(window_size=10, minimum_calls=10, failure_rate_threshold=50)
    states = outcomes(cb, "SSSSSFFFFF")              # 5/10 = 50 % exactly, on the 10th call
    assert states[:9] == [CLOSED] * 9 and states[9] == OPEN
    kinds = [e.kind for e in cb.events]
    assert "failure_rate_exceeded" in kinds and "slow_call_rate_exceeded" not in kinds


def test_failure_rate_just_below_threshold_does_not_trip():
    cb = breaker(window_size=10, minimum_calls=10, failure_rate_threshold=50)
    assert outcomes(cb, "SSSSSSFFFF")[-1] == CLOSED   # 40 %
    assert cb.snapshot().failure_rate == 40.0


def test_count_window_slides():
    cb = breaker(window_size=4, minimum_calls=4, failure_rate_threshold=75)
    # FFSS -> 50 %; then S,S push out both failures; then F,F,F -> 3 of the last 4.
    assert outcomes(cb, "FFSSSSFF") == [CLOSED] * 8
    assert outcomes(cb, "F") == [OPEN]


def test_slow_call_rate_equal_to_threshold_trips():
    cb = breaker(window_size=4, minimum_calls=4, slow_call_duration=1.0,
                 slow_call_rate_threshold=50)
    outcomes(cb, "SS", duration=0.5)
    assert outcomes(cb, "SS", duration=1.5)[-1] == OPEN   # 2 slow of 4 = 50 %, all succeeded
    assert [e.kind for e in cb.events if e.kind.endswith("exceeded")] \
        == ["slow_call_rate_exceeded"]


def test_a_call_exactly_at_slow_call_duration_is_not_slow():
    cb = breaker(window_size=3, minimum_calls=3, slow_call_duration=2.0,
                 slow_call_rate_threshold=100)
    assert outcomes(cb, "SSS", duration=2.0)[-1] == CLOSED
    assert cb.snapshot().slow_call_rate == 0.0
    assert outcomes(cb, "SSS", duration=2.0 + 1e-9)[-1] == OPEN


def test_slow_failures_count_as_slow_too():
    cb = breaker(window_size=2, minimum_calls=2, failure_rate_threshold=100,
                 slow_call_duration=1.0, slow_call_rate_threshold=100)
    outcomes(cb, "S", duration=5.0)
    assert outcomes(cb, "F", duration=5.0) == [OPEN]   # 50 % failures, 100 % slow


def test_time_window_drops_old_outcomes():
    clock = FakeClock()
    cb = breaker(clock, window_type="time", window_size=10, minimum_calls=3)
    outcomes(cb, "F")
    clock.t = 1.0
    outcomes(cb, "F")
    clock.t = 11.5                         # both failures are more than 10 s old
    assert cb.snapshot().calls == 0
    assert outcomes(cb, "SSF") == [CLOSED] * 3   # 1 of 3; a count window would see 3 of 5
    assert cb.snapshot().failure_rate == pytest.approx(100 / 3)


def test_time_window_keeps_recent_outcomes():
    clock = FakeClock()
    cb = breaker(clock, window_type="time", window_size=10, minimum_calls=3)
    outcomes(cb, "F")
    clock.t = 9.5
    assert outcomes(cb, "FS") == [CLOSED, OPEN]  # 2 of 3 within the last 10 s


# -- exceptions ---------------------------------------------------------------------------------

def test_exception_outside_record_counts_as_success():
    cb = breaker(window_size=2, minimum_calls=2, record=(OSError,))
    for _ in range(2):
        cb.try_acquire()
        cb.on_error(0.0, ValueError("business error"))
    assert cb.state == CLOSED
    assert cb.snapshot().failure_rate == 0.0
    assert [e.kind for e in cb.events] == ["success", "success"]
    for _ in range(2):
        cb.try_acquire()
        cb.on_error(0.0, ConnectionError("down"))   # a subclass of OSError: recorded
    assert cb.state == OPEN


def test_ignored_exception_counts_as_neither():
    cb = breaker(window_size=2, minimum_calls=2, ignore=(KeyError,))
    assert outcomes(cb, "FIIII") == [CLOSED] * 5
    assert cb.snapshot().calls == 1
    assert [e.kind for e in cb.events].count("ignored_error") == 4


def test_ignore_wins_over_record():
    cb = breaker(window_size=1, minimum_calls=1, record=(OSError,), ignore=(ConnectionError,))
    cb.try_acquire()
    cb.on_error(0.0, ConnectionError())
    assert cb.state == CLOSED and cb.snapshot().calls == 0


# -- open -----------------------------------------------------------------------------------------

async def test_calls_rejected_while_open_are_never_attempted():
    clock = FakeClock()
    cb = breaker(clock, window_size=2, minimum_calls=2, wait_in_open=30)
    runs = 0

    async def flaky():
        nonlocal runs
        runs += 1
        raise Boom()

    for _ in range(2):
        with pytest.raises(Boom):
            await cb.call(flaky)
    assert cb.state == OPEN and runs == 2
    for _ in range(5):
        clock.t += 5
        with pytest.raises(CallNotPermitted):
            await cb.call(flaky)
    assert runs == 2
    assert [e.kind for e in cb.events].count("not_permitted") == 5


async def test_the_tripping_call_gets_its_own_error():
    cb = breaker(window_size=1, minimum_calls=1)

    async def fails():
        raise Boom("the real cause")

    with pytest.raises(Boom, match="the real cause"):
        await cb.call(fails)
    assert cb.state == OPEN
    with pytest.raises(CallNotPermitted):
        await cb.call(fails)


def test_open_to_half_open_is_lazy():
    clock = FakeClock()
    cb = breaker(clock, window_size=1, minimum_calls=1, wait_in_open=10)
    trip(cb)
    clock.t = 1_000.0                 # far past the wait, but nobody called
    assert cb.state == OPEN
    assert transitions(cb) == [(CLOSED, OPEN)]
    assert cb.try_acquire()
    assert cb.state == HALF_OPEN
    assert cb.events[-1].kind == "state_transition" and cb.events[-1].time == 1_000.0


def test_open_waits_until_strictly_after_opened_at_plus_wait():
    clock = FakeClock(100.0)
    cb = breaker(clock, window_size=1, minimum_calls=1, wait_in_open=10)
    trip(cb)
    clock.t = 110.0                   # resilience4j: Instant.isAfter, so not yet
    assert not cb.try_acquire() and cb.state == OPEN
    clock.t = 110.001
    assert cb.try_acquire() and cb.state == HALF_OPEN


def test_late_outcome_after_trip_is_recorded_without_transition():
    cb = breaker(window_size=2, minimum_calls=2)
    assert cb.try_acquire()           # a slow call admitted while closed
    trip(cb)
    cb.on_success(0.0)                # ...finishes after the trip
    assert cb.state == OPEN
    assert transitions(cb) == [(CLOSED, OPEN)]


async def test_call_that_outlives_its_state_cannot_move_the_breaker():
    clock = FakeClock()
    cb = breaker(clock, window_size=2, minimum_calls=2, wait_in_open=10, permitted_in_half_open=1)
    release_slow = asyncio.Event()

    async def slow_then_fail():
        await release_slow.wait()
        raise Boom()

    slow = asyncio.create_task(cb.call(slow_then_fail))   # admitted while closed
    await asyncio.sleep(0)
    trip(cb)
    clock.t = 11
    outcomes(cb, "S")                                       # trial call: closed again
    assert cb.state == CLOSED
    release_slow.set()                                      # the old call fails now; its
    with pytest.raises(Boom):                               # window (F, F, F) is over the
        await slow                                          # threshold, but it is stale
    assert cb.state == CLOSED and cb.snapshot().calls == 0
    assert transitions(cb)[-1] == (HALF_OPEN, CLOSED)
    assert [e.kind for e in cb.events].count("failure_rate_exceeded") == 1


async def test_trial_call_that_outlives_a_reset_cannot_close_the_breaker():
    clock = FakeClock()
    cb = breaker(clock, window_size=1, minimum_calls=1, wait_in_open=10, permitted_in_half_open=1)
    trip(cb)
    clock.t = 11
    go = asyncio.Event()

    async def trial():
        await go.wait()
        return "ok"

    task = asyncio.create_task(cb.call(trial))             # admitted in half-open
    await asyncio.sleep(0)
    assert cb.state == HALF_OPEN
    cb.reset()
    trip(cb)
    go.set()
    assert await task == "ok"
    assert cb.state == OPEN


async def test_cancelled_call_from_an_older_state_returns_no_permit_to_the_new_one():
    clock = FakeClock()
    cb = breaker(clock, window_size=1, minimum_calls=1, wait_in_open=10, permitted_in_half_open=1)
    old = asyncio.create_task(cb.call(asyncio.Event().wait))   # admitted while closed
    await asyncio.sleep(0)
    trip(cb)
    clock.t = 11
    assert cb.try_acquire() and cb.state == HALF_OPEN           # the only trial permit
    old.cancel()
    with pytest.raises(asyncio.CancelledError):
        await old
    assert not cb.try_acquire()


# -- half-open ------------------------------------------------------------------------------------

def half_open(n: int, **kw) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    cb = breaker(clock, window_size=1, minimum_calls=1, wait_in_open=10,
                 permitted_in_half_open=n, **kw)
    trip(cb)
    clock.t = 11.0
    return cb, clock


def test_half_open_admits_exactly_n_calls():
    cb, _ = half_open(3)
    assert [cb.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert cb.state == HALF_OPEN
    assert cb.events[-1].kind == "not_permitted"


def test_one_failure_in_half_open_does_not_reopen_by_itself():
    cb, _ = half_open(4)
    for _ in range(4):
        cb.try_acquire()
    cb.on_error(0.0, Boom())
    assert cb.state == HALF_OPEN       # verdict waits for all four
    cb.on_success(0.0)
    cb.on_success(0.0)
    assert cb.state == HALF_OPEN
    cb.on_success(0.0)
    assert cb.state == CLOSED          # 1 of 4 = 25 % < 50 %


def test_half_open_reopens_when_rate_reaches_threshold():
    cb, _ = half_open(4)
    for _ in range(4):
        cb.try_acquire()
    for outcome in "SSF":
        cb.on_success(0.0) if outcome == "S" else cb.on_error(0.0, Boom())
    assert cb.state == HALF_OPEN
    cb.on_error(0.0, Boom())
    assert cb.state == OPEN            # 2 of 4 = 50 %: equal counts as exceeded
    assert transitions(cb)[-1] == (HALF_OPEN, OPEN)


def test_closing_starts_from_fresh_metrics():
    cb, _ = half_open(1)
    cb.try_acquire()
    cb.on_success(0.0)
    assert cb.state == CLOSED and cb.snapshot().calls == 0


def test_ignored_error_in_half_open_returns_its_permit():
    cb, _ = half_open(2, ignore=(KeyError,))
    assert cb.try_acquire() and cb.try_acquire()
    assert not cb.try_acquire()
    cb.on_error(0.0, KeyError("ignored"))
    assert cb.try_acquire()            # the permit came back
    assert not cb.try_acquire()
    cb.on_success(0.0)
    assert cb.state == HALF_OPEN       # only one recorded outcome of two
    cb.on_success(0.0)
    assert cb.state == CLOSED


def test_release_returns_a_half_open_permit_but_never_more_than_n():
    cb, _ = half_open(1)
    assert cb.try_acquire() and cb.state == HALF_OPEN
    cb.release()
    cb.release()                       # one permit taken, so at most one comes back
    assert cb.try_acquire()
    assert not cb.try_acquire()


async def test_cancelled_trial_call_returns_its_permit():
    cb, _ = half_open(1)
    started = asyncio.Event()

    async def hangs():
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(cb.call(hangs))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cb.state == HALF_OPEN
    assert await cb.call(asyncio.sleep, 0, result="ok") == "ok"
    assert cb.state == CLOSED


async def test_call_measures_duration_with_the_clock():
    clock = FakeClock(100.0)
    cb = breaker(clock, window_size=1, minimum_calls=1, slow_call_duration=1.0,
                 slow_call_rate_threshold=100)

    async def takes_two_seconds():
        clock.t += 2.0
        return 42

    assert await cb.call(takes_two_seconds) == 42
    assert cb.events[0].duration == 2.0
    assert cb.state == OPEN            # a slow success trips a 100 % slow-call threshold


# -- events ---------------------------------------------------------------------------------------

def test_every_transition_is_an_event_with_its_time():
    clock = FakeClock()
    cb = breaker(clock, window_size=2, minimum_calls=2, wait_in_open=5, permitted_in_half_open=1)
    seen: list[BreakerEvent] = []
    cb.add_listener(seen.append)
    outcomes(cb, "FF")                        # t=0 closed -> open
    clock.t = 6
    outcomes(cb, "S")                         # t=6 open -> half_open -> closed
    clock.t = 7
    outcomes(cb, "FF")                        # t=7 closed -> open
    clock.t = 13
    outcomes(cb, "F")                         # t=13 open -> half_open -> open
    assert transitions(cb) == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED),
                               (CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
    times = [e.time for e in cb.events if e.kind == "state_transition"]
    assert times == [0, 6, 6, 7, 13, 13]
    assert seen == cb.events
    assert [e.kind for e in cb.events].count("success") == 1
    assert [e.kind for e in cb.events].count("error") == 5


def test_events_df_has_one_row_per_event_and_a_plottable_state_column():
    cb = breaker(window_size=1, minimum_calls=1)
    empty = cb.events_df()
    assert len(empty) == 0 and "state" in empty.columns
    trip(cb)
    df = cb.events_df()
    assert len(df) == len(cb.events)
    assert list(df["kind"]) == ["error", "failure_rate_exceeded", "state_transition"]
    assert list(df["state"]) == [CLOSED, CLOSED, OPEN]


def test_a_failing_listener_does_not_break_the_breaker():
    cb = breaker(window_size=1, minimum_calls=1)

    def broken(event):
        raise RuntimeError("listener bug")

    cb.add_listener(broken)
    trip(cb)
    assert cb.state == OPEN


def test_reset_returns_to_closed_with_fresh_metrics():
    cb = breaker(window_size=1, minimum_calls=1)
    trip(cb)
    cb.reset()
    assert cb.state == CLOSED and cb.snapshot().calls == 0
    assert cb.events[-1].kind == "reset" and cb.events[-1].from_state == OPEN


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, param", [
    ({"wait_in_open": -1}, "wait_in_open"),
    ({"wait_in_open": 0}, "wait_in_open"),
    ({"failure_rate_threshold": 101}, "failure_rate_threshold"),
    ({"failure_rate_threshold": 0}, "failure_rate_threshold"),
    ({"slow_call_rate_threshold": 150}, "slow_call_rate_threshold"),
    ({"slow_call_duration": -0.5}, "slow_call_duration"),
    ({"window_size": 0}, "window_size"),
    ({"window_size": 2.5}, "window_size"),
    ({"window_type": "sliding"}, "window_type"),
    ({"minimum_calls": 0}, "minimum_calls"),
    ({"permitted_in_half_open": 0}, "permitted_in_half_open"),
    ({"record": "Exception"}, "record"),
    ({"ignore": (42,)}, "ignore"),
    ({"clock": 3.0}, "clock"),
    ({"failure_rate_threshold": "50"}, "failure_rate_threshold"),
])
def test_constructor_rejects_bad_parameters_by_name(kwargs, param):
    with pytest.raises((ValueError, TypeError), match=param):
        CircuitBreaker("dep", **kwargs)


@pytest.mark.parametrize("call, param", [
    (lambda: CircuitBreaker("no spaces"), "name"),
    (lambda: CircuitBreaker(""), "name"),
    (lambda: CircuitBreaker.consecutive("dep", fail_max=0), "fail_max"),
    (lambda: CircuitBreaker.consecutive("dep", reset_timeout=-1), "reset_timeout"),
    (lambda: breaker().on_success(-1), "duration"),
    (lambda: breaker().on_error(0.0, "boom"), "exc"),
    (lambda: breaker().add_listener(None), "callback"),
])
def test_public_functions_reject_bad_parameters_by_name(call, param):
    with pytest.raises((ValueError, TypeError), match=param):
        call()


async def test_call_rejects_a_non_callable():
    with pytest.raises(TypeError, match="fn"):
        await breaker().call(42)


def test_time_window_accepts_fractional_seconds():
    assert breaker(window_type="time", window_size=2.5).window_size == 2.5


# -- properties ---------------------------------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 12)),
    st.tuples(st.just("acquire"), st.just(0)),
    st.tuples(st.sampled_from(["ok", "fail", "slow", "ignore"]), st.just(0)),
), max_size=120)


@settings(max_examples=150, deadline=None)
@given(ops=ops, n=st.integers(1, 3), size=st.integers(1, 5), minimum=st.integers(1, 5),
       threshold=st.sampled_from([25.0, 50.0, 100.0]), time_window=st.booleans())
def test_state_machine_invariants(ops, n, size, minimum, threshold, time_window):
    clock = FakeClock()
    cb = breaker(clock, window_type="time" if time_window else "count", window_size=size,
                 minimum_calls=minimum, failure_rate_threshold=threshold, wait_in_open=5,
                 permitted_in_half_open=n, slow_call_duration=1.0, ignore=(KeyError,))
    held = 0                     # permits taken and not yet reported
    granted_in_half_open = 0     # permits taken minus ignored ones, this half-open episode
    for op, dt in ops:
        before = cb.state
        transitions_before = len(transitions(cb))
        if op == "tick":
            clock.t += dt
            assert cb.state == before, "reading the state must never move the breaker"
        elif op == "acquire":
            opened_at = cb._state.opened_at if before == OPEN else None
            ok = cb.try_acquire()
            if before == OPEN:
                # Leaves open only through a call strictly after opened_at + wait.
                assert ok == (clock.t > opened_at + 5)
            if ok:
                assert cb.state != OPEN, "a call was admitted while open"
                held += 1
                if cb.state == HALF_OPEN:
                    if before != HALF_OPEN:
                        granted_in_half_open = 0
                    granted_in_half_open += 1
                    assert granted_in_half_open <= n
        elif held:
            held -= 1
            if op == "ignore":
                cb.on_error(0.0, KeyError())
                if cb.state == HALF_OPEN:
                    granted_in_half_open -= 1
            elif op == "fail":
                cb.on_error(0.0, Boom())
            else:
                cb.on_success(2.0 if op == "slow" else 0.0)
            if (before, cb.state) == (CLOSED, OPEN):
                verdict = cb.snapshot()
                assert verdict.calls >= cb.minimum_calls
                assert verdict.failure_rate >= threshold or verdict.slow_call_rate >= 100.0
        assert len(transitions(cb)) - transitions_before <= 2
    chain = transitions(cb)
    assert all(t in TRANSITIONS for t in chain)
    assert all(a[1] == b[0] for a, b in zip(chain, chain[1:]))
    assert (chain[-1][1] if chain else CLOSED) == cb.state


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 8), st.booleans()), max_size=60))
def test_no_call_runs_while_open(steps):
    clock = FakeClock()
    cb = breaker(clock, window_size=3, minimum_calls=2, wait_in_open=4, permitted_in_half_open=2)
    states_seen_by_fn = []

    async def dependency(fail: bool):
        states_seen_by_fn.append(cb.state)
        if fail:
            raise Boom()

    async def drive():
        for dt, fail in steps:
            clock.t += dt
            before = len(states_seen_by_fn)
            try:
                await cb.call(dependency, fail)
            except CallNotPermitted:
                assert len(states_seen_by_fn) == before, "a refused call ran"
            except Boom:
                pass

    asyncio.run(drive())
    assert OPEN not in states_seen_by_fn


# -- cross-check against pybreaker ----------------------------------------------------------------

class Business(Exception):
    """Excluded in pybreaker, not recorded here: both count it as a success."""


EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


def run_pybreaker(trace, fail_max, reset_timeout):
    """States and whether the function ran, after each step, from pybreaker itself."""
    clock = FakeClock()

    class FakeDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return EPOCH + timedelta(seconds=clock.t)

    cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout,
                                  exclude=[Business])
    result = []
    # pybreaker reads time through the module-level name `datetime` (datetime.now(UTC)).
    with mock.patch.object(pybreaker, "datetime", FakeDatetime):
        for dt, outcome in trace:
            clock.t += dt
            ran = []

            def fn():
                ran.append(1)
                if outcome == "fail":
                    raise Boom()
                if outcome == "business":
                    raise Business()

            try:
                cb.call(fn)
            except (Boom, Business, pybreaker.CircuitBreakerError):
                pass
            result.append((cb.current_state.replace("-", "_"), bool(ran)))
    return result


def run_toylib(trace, fail_max, reset_timeout):
    clock = FakeClock()
    cb = CircuitBreaker.consecutive("dep", fail_max=fail_max, reset_timeout=reset_timeout,
                                    record=(Boom,), clock=clock)
    result = []

    async def drive():
        for dt, outcome in trace:
            clock.t += dt
            ran = []

            async def fn():
                ran.append(1)
                if outcome == "fail":
                    raise Boom()
                if outcome == "business":
                    raise Business()

            try:
                await cb.call(fn)
            except (Boom, Business, CallNotPermitted):
                pass
            result.append((cb.state, bool(ran)))

    asyncio.run(drive())
    return result


FIXED_TRACES = [
    # (fail_max, reset_timeout, [(dt, outcome), ...]); timeouts end in .5 so that no call lands
    # exactly on opened_at + timeout, where the two libraries knowingly differ (see below).
    (3, 10.5, [(1, "fail")] * 3 + [(1, "ok")] * 3 + [(11, "ok"), (1, "fail")]),
    (3, 10.5, [(1, "fail"), (1, "fail"), (1, "ok"), (1, "fail"), (1, "fail"), (1, "fail")]),
    (2, 5.5, [(0, "fail"), (0, "fail"), (6, "fail"), (1, "ok"), (5, "ok"), (0, "fail")]),
    (1, 1.5, [(1, "fail"), (2, "business"), (0, "fail"), (2, "ok"), (0, "ok")]),
    (2, 3.5, [(1, "business"), (1, "fail"), (1, "business"), (1, "fail"), (1, "fail")]),
]


@pytest.mark.parametrize("fail_max, reset_timeout, trace", FIXED_TRACES)
def test_consecutive_mode_matches_pybreaker_on_fixed_traces(fail_max, reset_timeout, trace):
    expected = run_pybreaker(trace, fail_max, reset_timeout)
    assert OPEN in {s for s, _ in expected}           # each trace exercises a trip
    assert run_toylib(trace, fail_max, reset_timeout) == expected


@settings(max_examples=150, deadline=None)
@given(fail_max=st.integers(1, 5), reset_timeout=st.sampled_from([0.5, 1.5, 2.5, 5.5]),
       trace=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["ok", "fail", "business"])),
                      max_size=60))
def test_consecutive_mode_matches_pybreaker_on_generated_traces(fail_max, reset_timeout, trace):
    assert run_toylib(trace, fail_max, reset_timeout) == \
        run_pybreaker(trace, fail_max, reset_timeout)


def test_known_difference_at_exactly_opened_at_plus_timeout():
    trace = [(0, "fail"), (10, "ok")]       # second call lands exactly at opened_at + 10
    assert run_pybreaker(trace, 1, 10) == [(OPEN, True), (CLOSED, True)]   # pybreaker: >=
    assert run_toylib(trace, 1, 10) == [(OPEN, True), (OPEN, False)]      # resilience4j: >
