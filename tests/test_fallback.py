"""The fallback cache serves the last good answer, marked stale, and otherwise re-raises."""
from __future__ import annotations

import asyncio

import pytest

from toylib.core.clock import FakeClock

from toylib.resilience.fallback import Answer, FallbackCache




class Dependency:
    def __init__(self):
        self.value = "v1"
        self.error: Exception | None = None

    async def __call__(self, key):
        if self.error:
            raise self.error
        return f"{key}:{self.value}"


async def test_fresh_answers_are_not_stale():
    cache = FallbackCache(clock=FakeClock())
    answer = await cache.call("a", Dependency(), "a")
    assert answer == Answer("a:v1", stale=False, age=0.0)
    assert cache.fresh == 1 and len(cache) == 1


async def test_failure_returns_last_good_answer_marked_stale_with_age():
    clock = FakeClock(100.0)
    cache, dep = FallbackCache(clock=clock), Dependency()
    await cache.call("a", dep, "a")
    dep.value = "v2"
    clock.t = 105.0
    await cache.call("a", dep, "a")                  # remembers v2 at t=105
    dep.error = ConnectionError("down")
    clock.t = 112.5
    answer = await cache.call("a", dep, "a")
    assert (answer.value, answer.stale, answer.age) == ("a:v2", True, 7.5)
    assert isinstance(answer.error, ConnectionError)
    assert cache.stale == 1


async def test_no_previous_answer_reraises():
    cache, dep = FallbackCache(clock=FakeClock()), Dependency()
    await cache.call("a", dep, "a")
    dep.error = TimeoutError()
    with pytest.raises(TimeoutError):
        await cache.call("b", dep, "b")              # answers are per key
    assert cache.misses == 1


async def test_answers_older_than_max_age_are_not_served():
    clock = FakeClock()
    cache, dep = FallbackCache(max_age=60, clock=clock), Dependency()
    await cache.call("a", dep, "a")
    dep.error = ConnectionError()
    clock.t = 60
    assert (await cache.call("a", dep, "a")).stale
    clock.t = 60.5
    with pytest.raises(ConnectionError):
        await cache.call("a", dep, "a")


async def test_only_listed_errors_fall_back():
    cache, dep = FallbackCache(fallback_on=(ConnectionError,), clock=FakeClock()), Dependency()
    await cache.call("a", dep, "a")
    dep.error = KeyError("a bug, not an outage")
    with pytest.raises(KeyError):
        await cache.call("a", dep, "a")


async def test_cancellation_is_not_hidden_by_a_stale_answer():
    cache, dep = FallbackCache(clock=FakeClock()), Dependency()
    await cache.call("a", dep, "a")

    async def cancelled(key):
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await cache.call("a", cancelled, "a")


async def test_forget_drops_the_remembered_answer():
    cache, dep = FallbackCache(clock=FakeClock()), Dependency()
    await cache.call("a", dep, "a")
    cache.forget("a")
    dep.error = ConnectionError()
    with pytest.raises(ConnectionError):
        await cache.call("a", dep, "a")


@pytest.mark.parametrize("call, param", [
    (lambda: FallbackCache(max_age=0), "max_age"),
    (lambda: FallbackCache(max_age=-1), "max_age"),
    (lambda: FallbackCache(fallback_on=("ConnectionError",)), "fallback_on"),
    (lambda: FallbackCache(fallback_on=(BaseException,)), "fallback_on"),
    (lambda: FallbackCache(clock=1.0), "clock"),
])
def test_rejects_bad_parameters_by_name(call, param):
    with pytest.raises((ValueError, TypeError), match=param):
        call()


async def test_call_rejects_bad_arguments_by_name():
    with pytest.raises(TypeError, match="key"):
        await FallbackCache().call(["unhashable"], Dependency(), "a")
    with pytest.raises(TypeError, match="fn"):
        await FallbackCache().call("a", "not callable")
