"""A closed topology keeps nothing alive: rerunning an experiment in one kernel keeps memory flat.

aiohttp (3.9+) memoises every (handler, app) middleware chain in a module-level LRU of 1,024
entries; before toylib cleared it when a service stops, every service that had served a request
stayed reachable (with its handlers and everything they close over) after its block ended, and
a chapter rerun ten times in one kernel doubled its memory. Measured three ways: weak
references to the services, Python allocations still held (tracemalloc) and the process's RSS.
"""
from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
import weakref

import pytest

from toylib.core.faults import Faults
from toylib.resilience.batcher import Batcher
from toylib.testing import other_tasks, settle
from toy_experiment import profile_topology

RUNS = 10
TABLE_KB = 512          # each run's services hold half a megabyte, as chapters hold their data


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


async def one_run(seed: int, refs: list) -> None:
    topo = profile_topology(seed=seed, table_kb=TABLE_KB)
    async with topo:
        for uid in range(3):
            await topo.call("gateway", "GET", f"/profile/{uid}")
    refs.extend(weakref.ref(s) for s in topo.services.values())
    refs.append(weakref.ref(topo))


async def test_services_of_a_closed_topology_are_collected():
    refs: list = []
    for run in range(3):
        await one_run(run, refs)
    await settle()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"still reachable after their blocks ended: {alive}"


async def test_ten_reruns_keep_memory_flat():
    """Memory held after run 10 is within a small margin of what run 1 left."""
    await one_run(-1, [])               # warm up: imports, lazily built library objects
    await settle()
    tracemalloc.start()
    try:
        held, rss = [], []
        for run in range(RUNS):
            await one_run(run, [])
            await settle()
            held.append(tracemalloc.get_traced_memory()[0] / 2 ** 20)
            rss.append(rss_mb())
    finally:
        tracemalloc.stop()
    one_run_mb = TABLE_KB / 1024
    growth = held[-1] - held[0]
    # Before the fix each run kept its table: about (RUNS - 1) * one_run_mb = 4.5 MB of growth.
    assert growth < one_run_mb / 2, (
        f"Python memory held grew by {growth:.2f} MB over {RUNS} runs "
        f"({', '.join(f'{x:.2f}' for x in held)} MB)")
    assert rss[-1] - rss[0] < 3 * one_run_mb + 8, f"RSS grew: {rss}"


def test_faults_remember_a_bounded_number_of_traces():
    from toylib.core.faults import MAX_SEEN, Latency
    f = Faults("svc")
    f.add(Latency(1))
    for i in range(MAX_SEEN + 500):
        f.decide("/x", "/x", f"t{i}")
    assert len(f._seen) == MAX_SEEN


def test_faults_replay_is_unchanged_within_the_bound():
    from toylib.core.faults import Error
    a, b = Faults("svc", seed=3), Faults("svc", seed=3)
    for f in (a, b):
        f.add(Error(p=0.5))
    first = [a.decide("/x", "/x", "t1").status for _ in range(50)]
    for i in range(1000):                           # other traces in between
        b.decide("/x", "/x", f"o{i}")
    assert [b.decide("/x", "/x", "t1").status for _ in range(50)] == first


def slow_batcher_fn():
    """A batch function that never finishes, and the event it sets once it has started."""
    started = asyncio.Event()

    async def slow_batch(keys):
        started.set()
        await asyncio.sleep(60)
        return keys
    return slow_batch, started


async def test_batcher_batches_end_with_their_owner():
    slow_batch, started = slow_batcher_fn()
    async with Batcher(slow_batch) as loader:
        fut = loader.load(1)
        await started.wait()
        assert len(loader._tasks) == 1
    assert not loader._tasks and fut.done()
    with pytest.raises(asyncio.CancelledError):
        fut.result()
    await settle(collect=False)
    assert not [t for t in other_tasks() if "slow_batch" in repr(t) or "_run" in repr(t)]


async def test_batcher_tasks_can_belong_to_a_topology():
    slow_batch, started = slow_batcher_fn()
    topo = profile_topology(table_kb=1)
    async with topo:
        loader = Batcher(slow_batch, spawn=topo.spawn)
        fut = loader.load("k")
        await started.wait()
        assert len(topo._tasks) == 1
    assert fut.done() and not loader._tasks
    gc.collect()
