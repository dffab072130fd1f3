"""Load generators: bounded in count and time, hung requests counted, open loop from due time."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
import pytest

from toylib import CallError, Service, Topology
from toylib.core.load import LoadResult, closed_loop, open_loop, sequential, summarize


async def quick(i):
    await asyncio.sleep(0)
    return {"i2": i * 2}


def sleeper(seconds):
    async def fn(i):
        await asyncio.sleep(seconds)
    return fn


async def hang(i):
    await asyncio.Event().wait()


# -- bounded by n ----------------------------------------------------------------------------
async def test_each_generator_is_bounded_by_n(leakcheck):
    runs = [await sequential(quick, n=7),
            await closed_loop(quick, n=7, concurrency=3),
            await open_loop(quick, n=7, rate=500)]
    for r in runs:
        assert len(r.df) == 7, r.mode
        assert sorted(r.df["i"]) == list(range(7))
        assert r.df["ok"].all() and (r.df["error"] == "").all()
        assert r.df["i2"].tolist() == [2 * i for i in range(7)]     # extra columns kept
    assert [r.mode for r in runs] == ["sequential", "closed", "open"]


async def test_closed_loop_never_exceeds_its_concurrency(leakcheck):
    live = peak = 0

    async def fn(i):
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.005)
        live -= 1

    r = await closed_loop(fn, n=30, concurrency=4)
    assert len(r.df) == 30 and peak == 4
    r = await closed_loop(fn, n=2, concurrency=10)
    assert len(r.df) == 2


# -- bounded by time; hung requests are counted ----------------------------------------------
async def test_each_generator_is_bounded_by_max_seconds(leakcheck):
    limit = 0.2
    for run in (lambda: sequential(sleeper(0.03), n=10_000, max_seconds=limit),
                lambda: closed_loop(sleeper(0.03), n=10_000, concurrency=2, max_seconds=limit),
                lambda: open_loop(sleeper(0.03), n=10_000, rate=50, max_seconds=limit)):
        t0 = time.perf_counter()
        r = await run()
        elapsed = time.perf_counter() - t0
        assert limit <= elapsed < limit + 0.3, (r.mode, elapsed)   # not 300 s
        assert 2 <= len(r.df) < 20, (r.mode, len(r.df))
        assert r.elapsed_s == pytest.approx(elapsed, abs=0.05)


@pytest.mark.parametrize("mode", ["sequential", "closed", "open"])
async def test_a_hanging_fn_stops_at_max_seconds_and_is_counted_unfinished(mode, leakcheck):
    limit = 0.15
    t0 = time.perf_counter()
    if mode == "sequential":
        r = await sequential(hang, n=5, max_seconds=limit)
        expected = 1
    elif mode == "closed":
        r = await closed_loop(hang, n=5, concurrency=3, max_seconds=limit)
        expected = 3
    else:
        r = await open_loop(hang, n=100, rate=20, max_seconds=limit)
        expected = 3        # due at 0, 50 and 100 ms; the next would be due at the limit
    elapsed = time.perf_counter() - t0
    assert limit <= elapsed < limit + 0.3
    assert len(r.df) == expected
    assert (r.df["error"] == "unfinished").all() and not r.df["ok"].any()
    s = r.summary()
    assert s["unfinished"] == expected and s["ok"] == 0 and s["success_rate"] == 0
    assert np.isnan(s["p50_ms"])


async def test_failures_are_data_with_their_kind(leakcheck):
    async def fn(i):
        if i % 3 == 0:
            raise CallError("client", "dep", "/x", "timeout")
        if i % 3 == 1:
            raise KeyError(i)

    r = await sequential(fn, n=6)
    assert r.df["error"].tolist() == ["timeout", "KeyError", "", "timeout", "KeyError", ""]
    assert r.df["ok"].tolist() == [False, False, True] * 2
    assert len(r.latencies) == 2
    assert r.summary()["success_rate"] == pytest.approx(1 / 3)


# -- open loop: arrivals on schedule, latency from the due time ------------------------------
async def test_open_loop_arrivals_are_on_schedule(leakcheck):
    r = await open_loop(quick, n=20, rate=200)
    due = r.df["due"].to_numpy()
    assert np.allclose(np.diff(due), 5.0)
    assert (r.df["start"] >= r.df["due"] - 1e-6).all()
    a = await open_loop(quick, n=50, rate=1000, arrivals="poisson", seed=1)
    b = await open_loop(quick, n=50, rate=1000, arrivals="poisson", seed=1)
    c = await open_loop(quick, n=50, rate=1000, arrivals="poisson", seed=2)
    gaps = lambda r: np.diff(r.df["due"].to_numpy())      # noqa: E731
    assert np.allclose(gaps(a), gaps(b)) and not np.allclose(gaps(a), gaps(c))
    assert gaps(a).std() > 0.3     # exponential gaps of mean 1 ms are anything but even


async def test_open_loop_latency_counts_from_the_due_time(leakcheck):
    """A sender that falls behind schedule must not make requests look faster."""
    def blocking(i):
        async def fn(i):
            time.sleep(0.02)          # blocks the loop: the next arrivals are sent late
        return fn(i)

    r = await open_loop(blocking, n=8, rate=200)
    df = r.df
    assert np.allclose(df["latency_ms"], df["end"] - df["due"])
    late = df["start"] - df["due"]
    assert late.iloc[-1] > 50          # the last was sent ~100 ms after it was due
    assert (df["latency_ms"] >= df["end"] - df["start"] - 1e-6).all()
    assert df["latency_ms"].iloc[-1] > 3 * (df["end"] - df["start"]).iloc[-1]
    c = await closed_loop(blocking, n=4, concurrency=1)
    assert np.allclose(c.df["due"], c.df["start"], atol=1.0)


async def test_coordinated_omission_open_loop_sees_the_queue(leakcheck):
    """A server that handles one request at a time (20 ms each, 50/s at most)."""
    svc = Service("serial", max_concurrency=1, when_full="wait")

    @svc.get("/work")
    async def work(request):
        await asyncio.sleep(0.02)
        return {}

    async with Topology(svc) as topo:
        fn = lambda i: topo.call("serial", "GET", "/work")    # noqa: E731
        closed = await closed_loop(fn, n=15, concurrency=1, label="closed")
        opened = await open_loop(fn, n=30, rate=100, label="open")   # twice what it can do
    table = summarize(closed, opened)
    assert list(table.index) == ["closed", "open"]
    assert table.loc["open", "ok"] == 30 and table.loc["closed", "ok"] == 15
    # closed loop: every request sees ~20 ms; open loop: the queue grows by 10 ms per arrival,
    # so the last of 30 waits ~300 ms (the tail the closed loop never asks about). The closed
    # loop's median, not its p99: of 15 requests the p99 is the one a busy machine stalled.
    assert table.loc["open", "p99_ms"] > 5 * table.loc["closed", "p50_ms"]
    assert table.loc["open", "throughput_rps"] < 60


# -- summaries -------------------------------------------------------------------------------
def test_summary_percentiles():
    lat = np.arange(1, 101, dtype=float)
    df = pd.DataFrame({"i": range(102), "due": 0.0, "start": 0.0,
                       "end": np.r_[lat, 500.0, 700.0],
                       "ok": [True] * 100 + [False, False],
                       "error": [""] * 100 + ["timeout", "unfinished"]})
    df["latency_ms"] = df["end"] - df["due"]
    r = LoadResult(df, "closed", 2.0, "x")
    s = r.summary(percentiles=(50, 90, 99))
    assert s["requests"] == 102 and s["ok"] == 100
    assert s["success_rate"] == pytest.approx(100 / 102)
    assert s["unfinished"] == 1
    assert s["throughput_rps"] == pytest.approx(50.0)
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["p50_ms"] == pytest.approx(np.percentile(lat, 50))
    assert s["p90_ms"] == pytest.approx(np.percentile(lat, 90))
    assert s["p99_ms"] == pytest.approx(np.percentile(lat, 99))
    assert s["max_ms"] == 700.0           # failures included in the worst case
    t = summarize(r, percentiles=(75,))
    assert t.loc["x", "p75_ms"] == pytest.approx(np.percentile(lat, 75))


# -- bad parameters --------------------------------------------------------------------------
@pytest.mark.parametrize("call, param", [
    (lambda: sequential(quick, n=0), "n"),
    (lambda: sequential(quick, n=2.5), "n"),
    (lambda: sequential(quick, n=3, max_seconds=0), "max_seconds"),
    (lambda: closed_loop(quick, n=3, concurrency=0), "concurrency"),
    (lambda: open_loop(quick, n=3, rate=0), "rate"),
    (lambda: open_loop(quick, n=3, rate=-5), "rate"),
    (lambda: open_loop(quick, n=3, rate=5, arrivals="burst"), "arrivals"),
    (lambda: sequential("not a function", n=3), "fn"),
])
async def test_bad_parameters_name_the_parameter(call, param):
    with pytest.raises((ValueError, TypeError)) as e:
        await call()
    assert str(e.value).startswith(param), str(e.value)
