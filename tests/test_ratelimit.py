"""The edge rate limiter: a token bucket stepped with a fake clock."""
from __future__ import annotations

import pytest

from toylib.core.clock import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from toylib.resilience.ratelimit import RateLimiter




def test_burst_then_reject():
    limiter = RateLimiter(rate=10, burst=3, clock=FakeClock())
    assert [limiter.try_acquire() for _ in range(5)] == [True, True, True, False, False]
    assert (limiter.admitted, limiter.rejected) == (3, 2)


def test_refills_at_rate():
    clock = FakeClock()
    limiter = RateLimiter(rate=10, burst=1, clock=clock)
    assert limiter.try_acquire() and not limiter.try_acquire()
    clock.t = 0.05
    assert not limiter.try_acquire()               # half a token
    clock.t = 0.1
    assert limiter.try_acquire()                   # exactly one, despite float drift
    for _ in range(10):
        clock.t += 0.1
        assert limiter.try_acquire()


def test_idle_time_does_not_save_more_than_burst():
    clock = FakeClock()
    limiter = RateLimiter(rate=100, burst=5, clock=clock)
    clock.t = 3600
    assert sum(limiter.try_acquire() for _ in range(20)) == 5


def test_a_clock_stepping_back_does_not_drain_or_fill():
    clock = FakeClock(10.0)
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    limiter.try_acquire()
    clock.t = 5.0
    assert limiter.try_acquire() and not limiter.try_acquire()


def test_weighted_acquire():
    limiter = RateLimiter(rate=1, burst=5, clock=FakeClock())
    assert limiter.try_acquire(4) and not limiter.try_acquire(2) and limiter.try_acquire(1)


@settings(max_examples=100, deadline=None)
@given(rate=st.sampled_from([0.5, 1, 7, 100]), burst=st.integers(1, 10),
       gaps=st.lists(st.floats(0, 2, allow_nan=False), max_size=200))
def test_admitted_never_exceeds_burst_plus_rate_times_elapsed(rate, burst, gaps):
    clock = FakeClock()
    limiter = RateLimiter(rate=rate, burst=burst, clock=clock)
    for gap in gaps:
        clock.t += gap
        limiter.try_acquire()
        assert limiter.admitted <= burst + rate * clock.t + 1e-6
    assert limiter.admitted + limiter.rejected == len(gaps)


def test_steady_overload_is_cut_to_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(rate=50, burst=10, clock=clock)
    for _ in range(10_000):                         # 1000 requests/s for 10 s
        clock.t += 0.001
        limiter.try_acquire()
    assert limiter.admitted == pytest.approx(10 + 50 * 10, abs=1)


@pytest.mark.parametrize("call, param", [
    (lambda: RateLimiter(rate=0), "rate"),
    (lambda: RateLimiter(rate=-5), "rate"),
    (lambda: RateLimiter(rate=1, burst=0), "burst"),
    (lambda: RateLimiter(rate=1, burst=0.5), "burst"),
    (lambda: RateLimiter(rate=1, clock=0), "clock"),
    (lambda: RateLimiter(rate=1, burst=2).try_acquire(3), "tokens"),
    (lambda: RateLimiter(rate=1).try_acquire(0), "tokens"),
    (lambda: RateLimiter(rate="fast"), "rate"),
])
def test_rejects_bad_parameters_by_name(call, param):
    with pytest.raises((ValueError, TypeError), match=param):
        call()
