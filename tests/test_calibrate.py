"""toylib.core.calibrate: the event loop's lag measured beside a block of work."""
from __future__ import annotations

import asyncio
import math
import time

import pytest

from toylib.core.calibrate import LoopLag, lag_during


async def test_lag_during_measures_beside_the_block(leakcheck):
    async with lag_during(0.1) as beside:
        assert beside.lag is None and math.isnan(beside.p99_ms)   # not known inside
        await asyncio.sleep(0.1)
    assert isinstance(beside.lag, LoopLag) and beside.lag.n > 0
    assert beside.p99_ms == beside.lag.p99_ms


async def test_lag_during_sees_a_blocked_loop(leakcheck):
    async with lag_during(0.2) as beside:
        await asyncio.sleep(0.02)
        time.sleep(0.08)              # the loop is held, as a burst of load holds it
        await asyncio.sleep(0.1)
    assert beside.lag.max_ms >= 50 and beside.lag.busy


async def test_an_error_in_the_block_leaves_no_task_running(leakcheck):
    with pytest.raises(RuntimeError, match="boom"):
        async with lag_during(5) as beside:
            raise RuntimeError("boom")
    assert beside.lag is None


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "1"])
async def test_lag_during_refuses_bad_seconds(bad):
    with pytest.raises((TypeError, ValueError), match="seconds"):
        async with lag_during(bad):
            pass
