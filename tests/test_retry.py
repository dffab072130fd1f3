"""Backoff formulas, the retry budget's bound and the rules for what may be retried."""
from __future__ import annotations

import asyncio
import random
import statistics

import pytest

from toylib.core.clock import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from toylib.resilience.retry import (POLICIES, Overloaded, RetryBudget, RetryStats, backoff_delays,
                          retry)




def temps(base, cap, n):
    return [min(cap, base * 2 ** k) for k in range(n)]


# -- backoff --------------------------------------------------------------------------------------

def test_no_jitter_is_deterministic_capped_exponential():
    assert backoff_delays("none", 0.1, 1.0, 6) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff_delays("none", 0.1, 1.0, 6, random.Random(1)) == \
        backoff_delays("none", 0.1, 1.0, 6, random.Random(2))


SEEDS = range(500)


def test_full_jitter_stays_in_zero_to_temp():
    for seed in SEEDS:
        delays = backoff_delays("full", 0.05, 3.0, 10, random.Random(seed))
        assert all(0 <= d <= t for d, t in zip(delays, temps(0.05, 3.0, 10))), seed


def test_equal_jitter_stays_in_half_temp_to_temp():
    for seed in SEEDS:
        delays = backoff_delays("equal", 0.05, 3.0, 10, random.Random(seed))
        assert all(t / 2 <= d <= t for d, t in zip(delays, temps(0.05, 3.0, 10))), seed


def test_decorrelated_jitter_grows_from_the_previous_delay():
    base, cap = 0.05, 3.0
    for seed in SEEDS:
        prev = base
        for d in backoff_delays("decorrelated", base, cap, 12, random.Random(seed)):
            assert base <= d <= min(cap, 3 * prev), seed
            prev = d


def test_jitter_actually_varies_and_is_reproducible_from_the_seed():
    for policy in ("full", "equal", "decorrelated"):
        a = backoff_delays(policy, 0.1, 10.0, 8, random.Random(7))
        assert a == backoff_delays(policy, 0.1, 10.0, 8, random.Random(7))
        assert a != backoff_delays(policy, 0.1, 10.0, 8, random.Random(8))
        assert a != backoff_delays("none", 0.1, 10.0, 8)


def test_full_jitter_mean_is_half_of_temp_and_equal_jitter_three_quarters():
    rng = random.Random(0)
    n = 4000
    full = [backoff_delays("full", 1.0, 100.0, 5, rng) for _ in range(n)]
    equal = [backoff_delays("equal", 1.0, 100.0, 5, rng) for _ in range(n)]
    for k, temp in enumerate(temps(1.0, 100.0, 5)):
        assert statistics.fmean(row[k] for row in full) == pytest.approx(temp / 2, rel=0.05)
        assert statistics.fmean(row[k] for row in equal) == pytest.approx(0.75 * temp, rel=0.03)


def test_long_backoff_does_not_overflow():
    assert backoff_delays("none", 1.0, 30.0, 3000)[-1] == 30.0
    assert max(backoff_delays("full", 1.0, 30.0, 3000, random.Random(0))) <= 30.0


def test_zero_attempts_gives_no_delays():
    assert backoff_delays("full", 0.1, 1.0, 0, random.Random(0)) == []


# -- retry budget ---------------------------------------------------------------------------------

def test_budget_allows_ratio_of_requests():
    budget = RetryBudget(0.1, burst=1, initial=0)
    allowed = 0
    for _ in range(100):
        budget.on_request()
        allowed += budget.try_spend()
    assert allowed == 10                     # ten deposits of 0.1 make one token despite floats
    assert budget.retries == 10 and budget.refused == 90


def test_budget_starts_with_burst_and_never_holds_more():
    budget = RetryBudget(0.5, burst=3)
    for _ in range(100):
        budget.on_request()                  # deposits beyond the burst are lost
    assert budget.tokens == 3
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]


def test_budget_refills_per_second_with_the_clock():
    clock = FakeClock()
    budget = RetryBudget(0.0, burst=2, per_second=0.5, clock=clock)
    assert budget.bound() == 2
    assert budget.try_spend() and budget.try_spend() and not budget.try_spend()
    clock.t = 1.0
    assert not budget.try_spend()
    clock.t = 2.0
    assert budget.try_spend() and not budget.try_spend()
    clock.t = 100.0                          # 49 tokens' worth of time, but the bucket holds 2
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    assert budget.bound() == pytest.approx(2 + 0.5 * 100)


# -- retry ----------------------------------------------------------------------------------------

class Flaky:
    """Fails ``failures`` times with ``exc``, then returns "ok"; counts invocations."""

    def __init__(self, failures: int, exc: Exception | None = None):
        self.failures = failures
        self.exc = exc or ConnectionError("reset")
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


class Sleeps:
    def __init__(self, clock: FakeClock | None = None):
        self.delays: list[float] = []
        self.clock = clock

    async def __call__(self, delay: float):
        self.delays.append(delay)
        if self.clock:
            self.clock.t += delay


async def test_retries_until_success_and_reports_attempts():
    fn, sleep, stats = Flaky(2), Sleeps(), RetryStats()
    result = await retry(fn, attempts=3, policy="none", base=0.1, cap=1.0, sleep=sleep,
                         stats=stats)
    assert result == "ok" and fn.calls == 3
    assert sleep.delays == pytest.approx([0.1, 0.2])
    assert (stats.calls, stats.attempts, stats.retries, stats.last_attempts) == (1, 3, 2, 3)
    assert stats.successes == 1 and stats.failures == 0


async def test_concurrent_calls_sharing_stats_each_get_the_full_attempt_limit():
    stats = RetryStats()

    async def yielding_sleep(delay):
        await asyncio.sleep(0)               # let the other call interleave

    fns = [Flaky(100) for _ in range(3)]
    results = await asyncio.gather(
        *(retry(fn, attempts=3, policy="none", sleep=yielding_sleep, stats=stats)
          for fn in fns),
        return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert [fn.calls for fn in fns] == [3, 3, 3]
    assert stats.attempts == 9 and stats.gave_up == {"limit": 3}


async def test_sleeps_follow_the_seeded_policy():
    sleep = Sleeps()
    await retry(Flaky(4), attempts=5, policy="decorrelated", base=0.1, cap=5.0,
                rng=random.Random(3), sleep=sleep)
    assert sleep.delays == backoff_delays("decorrelated", 0.1, 5.0, 4, random.Random(3))


async def test_per_request_attempt_limit():
    fn, stats = Flaky(100), RetryStats()
    with pytest.raises(ConnectionError):
        await retry(fn, attempts=4, policy="none", sleep=Sleeps(), stats=stats)
    assert fn.calls == 4 and stats.gave_up == {"limit": 1} and stats.failures == 1


async def test_overloaded_is_never_retried():
    fn, stats = Flaky(5, Overloaded("shedding load", retry_after=2.0)), RetryStats()
    with pytest.raises(Overloaded):
        await retry(fn, attempts=5, policy="none", retry_on=(Exception,),
                    retryable=lambda exc: True, sleep=Sleeps(), stats=stats)
    assert fn.calls == 1 and stats.gave_up == {"overloaded": 1}


async def test_non_idempotent_calls_are_not_retried():
    fn = Flaky(1)
    with pytest.raises(ConnectionError):
        await retry(fn, attempts=5, policy="none", idempotent=False, sleep=Sleeps())
    assert fn.calls == 1


async def test_only_listed_exceptions_are_retried():
    fn = Flaky(1, ValueError("bad request"))
    with pytest.raises(ValueError):
        await retry(fn, attempts=5, policy="none", retry_on=(ConnectionError,), sleep=Sleeps())
    assert fn.calls == 1
    assert await retry(Flaky(1), attempts=2, policy="none", retry_on=ConnectionError,
                       sleep=Sleeps()) == "ok"


async def test_predicate_classifies_errors():
    class HTTPError(Exception):
        def __init__(self, status):
            super().__init__(status)
            self.status = status

    def transient(exc):
        return getattr(exc, "status", 0) in (502, 504)

    assert await retry(Flaky(2, HTTPError(502)), attempts=3, policy="none",
                       retryable=transient, sleep=Sleeps()) == "ok"
    fn = Flaky(2, HTTPError(400))
    with pytest.raises(HTTPError):
        await retry(fn, attempts=3, policy="none", retryable=transient, sleep=Sleeps())
    assert fn.calls == 1


async def test_budget_stops_retries_when_empty():
    budget = RetryBudget(0.0, burst=1)      # one retry saved up, no deposits
    stats = RetryStats()
    first, second = Flaky(100), Flaky(100)
    for fn in (first, second):
        with pytest.raises(ConnectionError):
            await retry(fn, attempts=5, policy="none", budget=budget, sleep=Sleeps(), stats=stats)
    assert (first.calls, second.calls) == (2, 1)
    assert stats.gave_up == {"budget": 2}


async def test_cancellation_is_never_retried():
    calls = 0

    async def cancelled():
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    stats = RetryStats()
    with pytest.raises(asyncio.CancelledError):
        await retry(cancelled, attempts=5, policy="none", retry_on=(BaseException,),
                    sleep=Sleeps(), stats=stats)
    assert calls == 1
    assert stats.gave_up == {} and stats.retries == 0   # not a failure of the dependency


@settings(max_examples=120, deadline=None)
@given(ratio=st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.5, 1.0]),
       burst=st.integers(1, 5), initial=st.integers(0, 5),
       per_second=st.sampled_from([0.0, 0.1, 1.0]),
       attempts=st.integers(1, 6), policy=st.sampled_from(POLICIES),
       failures=st.lists(st.integers(0, 8), min_size=1, max_size=40))
def test_budget_bounds_total_attempts(ratio, burst, initial, per_second, attempts, policy,
                                      failures):
    clock = FakeClock()
    budget = RetryBudget(ratio, burst=burst, initial=min(initial, burst), per_second=per_second,
                         clock=clock)
    stats = RetryStats()
    rng = random.Random(0)

    async def drive():
        for n in failures:
            try:
                await retry(Flaky(n), attempts=attempts, policy=policy, base=0.05, cap=1.0,
                            budget=budget, rng=rng, sleep=Sleeps(clock), stats=stats)
            except ConnectionError:
                pass
            clock.t += 0.5

    asyncio.run(drive())
    assert stats.calls == len(failures) == budget.requests
    assert stats.retries == budget.retries
    assert stats.attempts <= stats.calls + budget.bound() + 1e-6
    assert stats.attempts <= stats.calls * attempts


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, param", [
    (lambda: backoff_delays("jittery", 0.1, 1.0, 3, random.Random(0)), "policy"),
    (lambda: backoff_delays("none", 0, 1.0, 3), "base"),
    (lambda: backoff_delays("none", -0.1, 1.0, 3), "base"),
    (lambda: backoff_delays("none", 0.1, -1.0, 3), "cap"),
    (lambda: backoff_delays("none", 1.0, 0.5, 3), "cap"),
    (lambda: backoff_delays("none", 0.1, 1.0, -1), "attempts"),
    (lambda: backoff_delays("none", 0.1, 1.0, 2.5), "attempts"),
    (lambda: backoff_delays("full", 0.1, 1.0, 3), "rng"),
    (lambda: backoff_delays("full", 0.1, 1.0, 3, rng=42), "rng"),
    (lambda: RetryBudget(1.5), "ratio"),
    (lambda: RetryBudget(-0.1), "ratio"),
    (lambda: RetryBudget(0.1, burst=-1), "burst"),
    (lambda: RetryBudget(0.1, burst=0.5), "burst"),
    (lambda: RetryBudget(0.1, burst=2, initial=3), "initial"),
    (lambda: RetryBudget(0.1, initial=-1), "initial"),
    (lambda: RetryBudget(0.1, per_second=-1), "per_second"),
    (lambda: RetryBudget(0.1, clock="now"), "clock"),
])
def test_rejects_bad_parameters_by_name(call, param):
    with pytest.raises((ValueError, TypeError), match=param):
        call()


@pytest.mark.parametrize("kwargs, param", [
    ({"attempts": 0}, "attempts"),
    ({"attempts": -2}, "attempts"),
    ({"policy": "exponential"}, "policy"),
    ({"base": 0}, "base"),
    ({"cap": 0.01, "base": 0.1}, "cap"),
    ({"policy": "full"}, "rng"),
    ({"retry_on": ("ConnectionError",)}, "retry_on"),
    ({"retryable": 5}, "retryable"),
    ({"idempotent": "yes"}, "idempotent"),
    ({"budget": 0.1}, "budget"),
])
async def test_retry_rejects_bad_parameters_by_name(kwargs, param):
    args = {"attempts": 3, "policy": "none", "sleep": Sleeps(), **kwargs}
    fn = Flaky(0)
    with pytest.raises((ValueError, TypeError), match=param):
        await retry(fn, **args)
    assert fn.calls == 0


async def test_retry_rejects_a_non_callable():
    with pytest.raises(TypeError, match="fn"):
        await retry("http://example", attempts=3, policy="none")
