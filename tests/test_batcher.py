"""The DataLoader-style batcher: one tick, one batch; dedupe; splits; failures not cached."""
from __future__ import annotations

import asyncio

import pytest

from toylib.resilience.batcher import Batcher


def recorder(fail_on=None, wrong_length=False, delay=0.0):
    calls: list[list] = []

    async def batch_fn(keys):
        calls.append(list(keys))
        if delay:
            await asyncio.sleep(delay)
        if fail_on is not None and fail_on in keys:
            raise LookupError(f"backend down for {fail_on}")
        values = [f"v{k}" for k in keys]
        return values[:-1] if wrong_length else values

    batch_fn.calls = calls
    return batch_fn


async def test_loads_in_one_tick_become_one_batch_in_order(leakcheck):
    fn = recorder()
    b = Batcher(fn)
    values = await asyncio.gather(b.load(3), b.load(1), b.load(2))
    assert values == ["v3", "v1", "v2"]
    assert fn.calls == [[3, 1, 2]] and b.batches == [[3, 1, 2]]


async def test_loads_from_concurrent_tasks_share_a_batch(leakcheck):
    """N+1-shaped code: each task loads its own key, written as if alone."""
    fn = recorder()
    b = Batcher(fn)

    async def one(k):
        return await b.load(k)

    assert await asyncio.gather(*(one(k) for k in range(10))) == [f"v{k}" for k in range(10)]
    assert fn.calls == [list(range(10))]


async def test_loads_in_different_ticks_are_different_batches(leakcheck):
    fn = recorder()
    b = Batcher(fn)
    assert await b.load(1) == "v1"
    assert await b.load_many([2, 3]) == ["v2", "v3"]
    assert fn.calls == [[1], [2, 3]]


async def test_duplicate_keys_are_fetched_once(leakcheck):
    fn = recorder()
    b = Batcher(fn)
    assert await b.load_many([5, 6, 5, 5, 7]) == ["v5", "v6", "v5", "v5", "v7"]
    assert fn.calls == [[5, 6, 7]]
    assert await b.load(5) == "v5"           # cached for the loader's life
    assert fn.calls == [[5, 6, 7]]
    nocache = recorder()
    b2 = Batcher(nocache, cache=False)
    await b2.load_many([1, 1])
    await b2.load(1)
    assert nocache.calls == [[1, 1], [1]]


async def test_max_batch_splits_in_order(leakcheck):
    fn = recorder()
    b = Batcher(fn, max_batch=4)
    keys = list(range(10))
    assert await b.load_many(keys) == [f"v{k}" for k in keys]
    assert fn.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_split_batches_run_concurrently(leakcheck):
    fn = recorder(delay=0.05)
    b = Batcher(fn, max_batch=2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await b.load_many(range(8))
    assert len(fn.calls) == 4
    assert loop.time() - t0 < 3 * 0.05       # four batches of 50 ms overlap, not 200 ms


async def test_a_failed_batch_reaches_every_waiter_and_is_not_cached(leakcheck):
    fn = recorder(fail_on=2)
    b = Batcher(fn)
    results = await asyncio.gather(b.load(1), b.load(2), b.load(2), b.load(3),
                                   return_exceptions=True)
    assert len(results) == 4
    assert all(isinstance(r, LookupError) for r in results)
    assert fn.calls == [[1, 2, 3]]
    # not cached: the next load asks again (and succeeds for keys that do not fail)
    assert await b.load(1) == "v1"
    assert fn.calls == [[1, 2, 3], [1]]
    with pytest.raises(LookupError):
        await b.load(2)
    assert fn.calls[-1] == [2]


async def test_a_failed_split_does_not_poison_the_other_batch(leakcheck):
    fn = recorder(fail_on=9)
    b = Batcher(fn, max_batch=2)
    results = await asyncio.gather(*(b.load(k) for k in (1, 2, 9, 4)), return_exceptions=True)
    assert results[:2] == ["v1", "v2"]
    assert all(isinstance(r, LookupError) for r in results[2:])
    assert await b.load(1) == "v1" and len(fn.calls) == 2   # the good batch stayed cached


async def test_a_batch_fn_returning_the_wrong_length_is_an_error(leakcheck):
    fn = recorder(wrong_length=True)
    b = Batcher(fn)
    with pytest.raises(ValueError, match="batch_fn must return a list of 3"):
        await b.load_many([1, 2, 3])

    async def not_a_list(keys):
        return {k: k for k in keys}

    with pytest.raises(ValueError, match="batch_fn"):
        await Batcher(not_a_list).load_many([1, 2])


def test_bad_parameters():
    with pytest.raises(TypeError, match="batch_fn"):
        Batcher(lambda keys: keys)
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(recorder(), max_batch=0)
