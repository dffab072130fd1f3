"""The health checker: thresholds, probe outcomes, and a task that never outlives its block."""
from __future__ import annotations

import asyncio

import pytest

from toylib.core.clock import FakeClock

from toylib.resilience.health import HealthChecker, HealthEvent




class FakeSleep:
    """Advances the fake clock instead of waiting, but still yields to the event loop."""

    def __init__(self, clock: FakeClock):
        self.clock = clock

    async def __call__(self, delay: float):
        self.clock.t += delay
        await asyncio.sleep(0)


class Switch:
    """A probe whose answer the test sets: True passes, False or an exception fails."""

    def __init__(self, answer=True):
        self.answer = answer
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def other_tasks() -> set[asyncio.Task]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def test_thresholds_need_consecutive_results():
    clock = FakeClock()
    a = Switch()
    hc = HealthChecker({"a": a}, healthy_threshold=2, unhealthy_threshold=3, clock=clock)
    for answer, expected in [(False, True), (False, True), (True, True),   # streak broken
                             (False, True), (False, True), (False, False),  # 3 in a row
                             (True, False), (True, True)]:                 # 2 in a row
        a.answer = answer
        clock.t += 1
        await hc.check_once()
        assert hc.is_healthy("a") is expected
    assert hc.events == [HealthEvent(6, "a", False), HealthEvent(8, "a", True)]


async def test_raising_and_false_probes_fail_other_values_pass():
    probes = {"raises": Switch(ConnectionError()), "false": Switch(False),
              "none": Switch(None), "status": Switch(200)}
    hc = HealthChecker(probes, unhealthy_threshold=1, clock=FakeClock())
    assert await hc.check_once() == {"raises": False, "false": False, "none": True,
                                     "status": True}
    assert sorted(hc.healthy()) == ["none", "status"]


async def test_a_probe_that_hangs_fails_after_its_timeout():
    async def hangs():
        await asyncio.Event().wait()

    hc = HealthChecker({"slow": hangs, "fast": Switch()}, timeout=0.005,
                       unhealthy_threshold=1, clock=FakeClock())
    assert await hc.check_once() == {"slow": False, "fast": True}
    assert other_tasks() == set()


async def test_start_unhealthy_until_proven_healthy():
    hc = HealthChecker({"a": Switch()}, start_healthy=False, healthy_threshold=2,
                       clock=FakeClock())
    assert not hc.is_healthy("a")
    await hc.check_once()
    assert not hc.is_healthy("a")
    await hc.check_once()
    assert hc.is_healthy("a")


async def test_block_probes_on_the_interval_and_leaves_no_task():
    clock = FakeClock()
    a = Switch(False)
    async with HealthChecker({"a": a}, interval=2.0, unhealthy_threshold=2, clock=clock,
                             sleep=FakeSleep(clock)) as hc:
        assert hc.running
        while hc.rounds < 5:
            await asyncio.sleep(0)
        assert not hc.is_healthy("a")
    assert not hc.running
    assert other_tasks() == set()
    assert hc.events == [HealthEvent(2.0, "a", False)]   # second probe, one interval later
    calls = a.calls
    await asyncio.sleep(0)
    assert a.calls == calls                              # nothing probes after the block


async def test_no_task_left_when_the_block_raises():
    clock = FakeClock()
    with pytest.raises(RuntimeError, match="boom"):
        async with HealthChecker({"a": Switch()}, clock=clock, sleep=FakeSleep(clock)) as hc:
            await asyncio.sleep(0)
            raise RuntimeError("boom")
    assert not hc.running and other_tasks() == set()


async def test_no_task_left_when_the_block_is_cancelled():
    clock = FakeClock()
    inside = asyncio.Event()
    hc = HealthChecker({"a": Switch()}, clock=clock, sleep=FakeSleep(clock))

    async def user():
        async with hc:
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(user())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not hc.running and other_tasks() == set()


async def test_exit_waits_for_a_probe_that_cleans_up_slowly():
    clock = FakeClock()
    cleaned = []
    probing = asyncio.Event()

    async def stubborn():
        probing.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)          # cleanup that needs a few more loop turns
            await asyncio.sleep(0)
            cleaned.append(True)

    async with HealthChecker({"a": stubborn}, timeout=None, clock=clock,
                             sleep=FakeSleep(clock)):
        await probing.wait()
    assert cleaned == [True] and other_tasks() == set()


async def test_cancelled_while_leaving_still_waits_and_leaves_cleanup_alone():
    clock = FakeClock()
    probing, leaving, finish_cleanup = asyncio.Event(), asyncio.Event(), asyncio.Event()
    cleaned = []

    async def stubborn():
        probing.set()
        try:
            await asyncio.Event().wait()
        finally:
            await finish_cleanup.wait()     # e.g. closing a connection
            cleaned.append(True)

    async def user():
        async with HealthChecker({"a": stubborn}, timeout=None, clock=clock,
                                 sleep=FakeSleep(clock)):
            await probing.wait()
            leaving.set()

    task = asyncio.create_task(user())
    await leaving.wait()
    for _ in range(3):
        await asyncio.sleep(0)              # the user task is now waiting in __aexit__
    task.cancel()                           # a second cancellation must not hit the cleanup
    await asyncio.sleep(0)
    assert not task.done()                  # still waiting for the checker to finish
    finish_cleanup.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True] and other_tasks() == set()


async def test_cannot_enter_twice():
    clock = FakeClock()
    hc = HealthChecker({"a": Switch()}, clock=clock, sleep=FakeSleep(clock))
    async with hc:
        with pytest.raises(RuntimeError, match="already running"):
            async with hc:
                pass
    assert other_tasks() == set()


@pytest.mark.parametrize("kwargs, param", [
    ({"interval": 0}, "interval"),
    ({"interval": -1}, "interval"),
    ({"timeout": 0}, "timeout"),
    ({"healthy_threshold": 0}, "healthy_threshold"),
    ({"unhealthy_threshold": 1.5}, "unhealthy_threshold"),
    ({"start_healthy": "yes"}, "start_healthy"),
    ({"clock": None}, "clock"),
])
def test_rejects_bad_parameters_by_name(kwargs, param):
    with pytest.raises((ValueError, TypeError), match=param):
        HealthChecker({"a": Switch()}, **kwargs)


@pytest.mark.parametrize("targets, param", [
    ({}, "targets"),
    ([Switch()], "targets"),
    ({"bad name": Switch()}, "targets"),
    ({"a": "http://a/health"}, "targets"),
])
def test_rejects_bad_targets_by_name(targets, param):
    with pytest.raises((ValueError, TypeError), match=param):
        HealthChecker(targets)


def test_unknown_target_is_named():
    with pytest.raises(ValueError, match="target"):
        HealthChecker({"a": Switch()}).is_healthy("b")
