"""The bulkhead fails fast when full, never runs the rejected function, always frees its slot."""
from __future__ import annotations

import asyncio

import pytest

from toylib.resilience.bulkhead import Bulkhead, BulkheadFull


async def fill(bulkhead: Bulkhead, n: int):
    """Occupy ``n`` slots with calls that wait on ``gate``; returns (gate, tasks)."""
    gate = asyncio.Event()
    tasks = [asyncio.create_task(bulkhead.call(gate.wait)) for _ in range(n)]
    await asyncio.sleep(0)
    assert bulkhead.active == n
    return gate, tasks


async def test_full_bulkhead_fails_fast_and_never_runs_the_function():
    bulkhead = Bulkhead("payments", max_concurrent=2)
    gate, tasks = await fill(bulkhead, 2)
    runs = 0

    async def work():
        nonlocal runs
        runs += 1

    with pytest.raises(BulkheadFull, match="payments"):
        await bulkhead.call(work)
    assert runs == 0
    assert (bulkhead.admitted, bulkhead.rejected, bulkhead.active) == (2, 1, 2)
    gate.set()
    await asyncio.gather(*tasks)
    assert bulkhead.active == 0
    await bulkhead.call(work)
    assert runs == 1 and bulkhead.peak == 2


async def test_async_with_form_rejects_without_entering_the_block():
    bulkhead = Bulkhead("search", max_concurrent=1)
    entered = []
    async with bulkhead:
        with pytest.raises(BulkheadFull):
            async with bulkhead:
                entered.append("inner")
    assert entered == [] and bulkhead.active == 0


async def test_slot_is_released_after_an_error():
    bulkhead = Bulkhead("dep", max_concurrent=1)

    async def fails():
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            await bulkhead.call(fails)
    assert bulkhead.active == 0 and bulkhead.admitted == 3 and bulkhead.rejected == 0


async def test_slot_is_released_after_cancellation():
    bulkhead = Bulkhead("dep", max_concurrent=1)
    _, [task] = await fill(bulkhead, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bulkhead.active == 0
    assert await bulkhead.call(asyncio.sleep, 0, result=7) == 7


async def test_at_most_max_concurrent_run_at_once():
    bulkhead = Bulkhead("dep", max_concurrent=3)
    running = peak = 0

    async def work():
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1

    results = await asyncio.gather(*(bulkhead.call(work) for _ in range(10)),
                                   return_exceptions=True)
    assert peak == 3
    assert sum(isinstance(r, BulkheadFull) for r in results) == bulkhead.rejected == 7


async def test_sync_functions_are_accepted():
    assert await Bulkhead("dep").call(lambda x: x + 1, 1) == 2


def test_try_acquire_and_release():
    bulkhead = Bulkhead("dep", max_concurrent=1)
    assert bulkhead.try_acquire() and not bulkhead.try_acquire()
    bulkhead.release()
    with pytest.raises(RuntimeError, match="release"):
        bulkhead.release()


@pytest.mark.parametrize("call, param", [
    (lambda: Bulkhead("dep", max_concurrent=0), "max_concurrent"),
    (lambda: Bulkhead("dep", max_concurrent=-3), "max_concurrent"),
    (lambda: Bulkhead("dep", max_concurrent=2.5), "max_concurrent"),
    (lambda: Bulkhead("", 3), "name"),
])
def test_rejects_bad_parameters_by_name(call, param):
    with pytest.raises((ValueError, TypeError), match=param):
        call()


async def test_call_rejects_a_non_callable():
    with pytest.raises(TypeError, match="fn"):
        await Bulkhead("dep").call(None)
