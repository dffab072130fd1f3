"""Fault injection: each toxic does what it says, where and when it says, and replays by seed."""
from __future__ import annotations

import asyncio
import random
import time

import pytest

from toylib.testing import FakeClock, binomial_margin, median
from toylib import CallError, Error, Hang, Latency, Reset, Service, SlowDown, Topology
from toylib.core.faults import Faults


def service(name: str = "dep") -> Service:
    svc = Service(name)

    @svc.get("/a/{id}")
    async def a(request):
        return {"route": "a"}

    @svc.get("/b/{id}")
    async def b(request):
        return {"route": "b"}

    return svc


async def timed(topo, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await topo.call("dep", "GET", path)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def failing_indexes(seed: int, n: int, p: float) -> set[int]:
    svc = service()
    svc.faults.add(Error(p))
    failed = set()
    async with Topology(svc, seed=seed) as topo:
        for i in range(n):
            try:
                await topo.call("dep", "GET", f"/a/{i}")
            except CallError as e:
                assert e.kind == "http" and e.status == 503
                failed.add(i)
    return failed


# -- latency ---------------------------------------------------------------------------------
async def test_latency_applies_and_scales(leakcheck):
    svc = service()
    # The fastest of several calls: a delay never shortens a call, and on a busy machine (other
    # work sharing the cores) the fastest is the least held up. How much a call may still be
    # held up is calibrated in the same run: the event loop's lateness (p99 of short sleeps).
    from toylib.core.calibrate import loop_lag
    async with Topology(svc) as topo:
        base = min(await timed(topo, "/a/1", 7))
        rule = svc.faults.add(Latency(40, 0))
        slow40 = min(await timed(topo, "/a/1", 7))
        svc.faults.remove(rule)
        svc.faults.add(Latency(80, 0))
        slow80 = min(await timed(topo, "/a/1", 7))
    lag = await loop_lag(0.2)
    noise = 2 * lag.p99_ms + 5
    for ms, slow in ((40, slow40), (80, slow80)):
        assert 0.95 * ms <= slow - base <= 1.1 * ms + noise, (ms, base, slow, str(lag))
    assert slow80 - slow40 >= 0.9 * 40 - noise, (slow40, slow80, str(lag))


def test_latency_distributions_have_the_stated_centre():
    rng = random.Random(1)
    n = 4000
    for dist, centre in (("uniform", "mean"), ("normal", "mean"), ("exponential", "mean"),
                         ("lognormal", "median")):
        lat = Latency(50, 20, dist)
        xs = sorted(lat.sample(rng) * 1000 for _ in range(n))
        got = sum(xs) / n if centre == "mean" else xs[n // 2]
        assert 45 <= got <= 55, (dist, got)
        assert min(xs) >= 0
    xs = [Latency(50, 20, "uniform").sample(rng) * 1000 for _ in range(n)]
    assert 30 <= min(xs) and max(xs) <= 70 and max(xs) - min(xs) > 35
    assert {Latency(50, 20, "fixed").sample(rng) for _ in range(10)} == {0.05}


# -- error rate, seeds, replay ---------------------------------------------------------------
async def test_error_rate_is_close_to_p_and_replays_by_seed(leakcheck):
    n, p = 300, 0.2
    first = await failing_indexes(seed=7, n=n, p=p)
    again = await failing_indexes(seed=7, n=n, p=p)
    other = await failing_indexes(seed=8, n=n, p=p)
    assert abs(len(first) / n - p) <= binomial_margin(p, n)
    assert abs(len(other) / n - p) <= binomial_margin(p, n)
    assert first == again, "the same seed must fail the same requests"
    assert first != other, "another seed must fail other requests"
    # two independent draws of ~60 from 300 overlap by ~12; identical sets would be absurd
    assert len(first ^ other) > 20


async def test_error_decision_does_not_depend_on_arrival_order(leakcheck):
    n = 60

    async def run(order) -> set[int]:
        svc = service()
        svc.faults.add(Error(0.3))
        failed = set()

        async def one(i):
            await asyncio.sleep(order[i] * 0.002)   # a different interleaving per run
            try:
                await topo.call("dep", "GET", "/a/0", trace_id=f"page{i}")
            except CallError:
                failed.add(i)

        async with Topology(svc, seed=3) as topo:
            await asyncio.gather(*(one(i) for i in range(n)))
        return failed

    forward = await run(list(range(n)))
    backward = await run(list(range(n))[::-1])
    shuffled = list(range(n))
    random.Random(5).shuffle(shuffled)
    mixed = await run(shuffled)
    assert 0 < len(forward) < n
    assert forward == backward == mixed


def test_error_probability_zero_and_one():
    f = Faults("s", seed=1)
    f.add(Error(0.0))
    assert all(f.decide("/x", "/x", f"t{i}").status is None for i in range(100))
    f.clear()
    f.add(Error(1.0, status=500))
    assert all(f.decide("/x", "/x", f"t{i}").status == 500 for i in range(100))


def test_repeated_calls_in_one_trace_get_independent_draws():
    f = Faults("s", seed=1)
    f.add(Error(0.5))
    draws = [f.decide("/x", "/x", "same").status for _ in range(200)]
    failures = sum(d is not None for d in draws)
    assert abs(failures / 200 - 0.5) <= binomial_margin(0.5, 200)


def test_reseed_replays():
    f = Faults("s", seed=4)
    f.add(Error(0.5))
    a = [f.decide("/x", "/x", "t").status for _ in range(50)]
    f.reseed(4)
    b = [f.decide("/x", "/x", "t").status for _ in range(50)]
    f.reseed(5)
    c = [f.decide("/x", "/x", "t").status for _ in range(50)]
    assert a == b != c


# -- hang and reset --------------------------------------------------------------------------
async def test_hang_never_answers_and_the_caller_times_out(leakcheck):
    svc = service()
    svc.faults.add(Hang())
    async with Topology(svc) as topo:
        t0 = time.perf_counter()
        with pytest.raises(CallError) as e:
            await topo.call("dep", "GET", "/a/1", timeout=0.1)
        elapsed = time.perf_counter() - t0
        assert e.value.kind == "timeout"
        assert 0.1 <= elapsed < 0.4
        await asyncio.sleep(0.05)
        assert svc.in_flight == 0, "the hung handler outlived its caller"
        # without a timeout it really does hang
        task = asyncio.ensure_future(topo.call("dep", "GET", "/a/2"))
        done, _ = await asyncio.wait([task], timeout=0.3)
        assert not done
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_reset_closes_the_connection(leakcheck):
    svc = service()
    svc.faults.add(Reset())
    async with Topology(svc) as topo:
        for _ in range(2):
            with pytest.raises(CallError) as e:
                await topo.call("dep", "GET", "/a/1")
            assert e.value.kind == "reset" and e.value.status is None
        svc.faults.clear()
        assert await topo.call("dep", "GET", "/a/1") == {"route": "a"}
    assert [s.status for s in topo.tracer.spans] == ["reset", "reset", 200]


# -- where: routes; how often: toxicity ------------------------------------------------------
async def test_route_scoped_rules_only_hit_that_route(leakcheck):
    svc = service()
    svc.faults.add(Error(1.0, status=500), route="/a/{id}")
    svc.faults.add(Error(1.0, status=502), route="/b/2")     # a path prefix
    async with Topology(svc) as topo:
        for i in range(5):
            with pytest.raises(CallError) as e:
                await topo.call("dep", "GET", f"/a/{i}")
            assert e.value.status == 500
        assert await topo.call("dep", "GET", "/b/1") == {"route": "b"}
        assert await topo.call("dep", "GET", "/b/3") == {"route": "b"}
        with pytest.raises(CallError) as e:
            await topo.call("dep", "GET", "/b/2")
        assert e.value.status == 502
        health = await topo.call("dep", "GET", "/health")
        assert health["status"] == "up"


def test_toxicity_is_the_fraction_of_requests_affected():
    n = 1000
    f = Faults("s", seed=2)
    f.add(Latency(30), toxicity=0.25)
    hit = sum(f.decide("/x", "/x", f"t{i}").delay > 0 for i in range(n))
    assert abs(hit / n - 0.25) <= binomial_margin(0.25, n)
    f = Faults("s", seed=2)
    f.add(Error(0.5), toxicity=0.5)     # both apply: about a quarter fail
    failed = sum(f.decide("/x", "/x", f"t{i}").status is not None for i in range(n))
    assert abs(failed / n - 0.25) <= binomial_margin(0.25, n)


def test_toxics_add_up():
    f = Faults("s")
    f.add(Latency(20))
    f.add(Latency(30))
    d = f.decide("/x", "/x", "t")
    assert d.delay == pytest.approx(0.05)
    assert d.applied == ["Latency", "Latency"]


# -- when: start/end windows, slowdown -------------------------------------------------------
def test_start_end_window_with_a_fake_clock():
    clock = FakeClock(1000.0)
    f = Faults("s", clock=clock)
    f.add(Error(1.0), start=10, end=20)
    seen = []
    for t in (0, 9.99, 10, 15, 19.99, 20, 30):
        clock.t = 1000 + t
        seen.append(f.decide("/x", "/x", f"t{t}").status is not None)
    assert seen == [False, False, True, True, True, False, False]


def test_window_counts_from_when_the_rule_was_added():
    clock = FakeClock(1000.0)
    f = Faults("s", clock=clock)
    clock.advance(100)
    f.add(Hang(), start=5)
    clock.advance(4)
    assert not f.decide("/x", "/x", "a").hang
    clock.advance(2)
    assert f.decide("/x", "/x", "b").hang


def test_slowdown_grows_while_active():
    clock = FakeClock(1000.0)
    f = Faults("s", clock=clock)
    f.add(SlowDown(ms_per_s=10, start_ms=5, max_ms=100), start=2)
    delays = []
    for t in (0, 2, 3, 6, 12, 50):
        clock.t = 1000 + t
        delays.append(round(f.decide("/x", "/x", f"t{t}").delay * 1000, 6))
    assert delays == [0, 5, 15, 45, 100, 100]


async def test_clear_removes_every_rule(leakcheck):
    svc = service()
    svc.faults.add(Error(1.0))
    svc.faults.add(Latency(50))
    async with Topology(svc) as topo:
        with pytest.raises(CallError):
            await topo.call("dep", "GET", "/a/1")
        svc.faults.clear()
        assert svc.faults.rules == []
        t0 = time.perf_counter()
        assert await topo.call("dep", "GET", "/a/1") == {"route": "a"}
        assert time.perf_counter() - t0 < 0.04
    assert svc.faults.decide("/a/{id}", "/a/1", "t").applied == []


def test_remove_unknown_rule_is_an_error():
    f, g = Faults("s"), Faults("t")
    rule = g.add(Hang())
    with pytest.raises(ValueError, match="rule"):
        f.remove(rule)


# -- bad parameters --------------------------------------------------------------------------
@pytest.mark.parametrize("make, param", [
    (lambda: Latency(-1), "ms"),
    (lambda: Latency(10, -1), "jitter_ms"),
    (lambda: Latency(10, 20), "jitter_ms"),              # uniform would go negative
    (lambda: Latency(10, 1, "bimodal"), "distribution"),
    (lambda: Error(1.5), "p"),
    (lambda: Error(-0.1), "p"),
    (lambda: Error(0.5, status=200), "status"),
    (lambda: SlowDown(-1), "ms_per_s"),
    (lambda: SlowDown(1, max_ms=0), "max_ms"),
    (lambda: Faults("s").add(Error(), route="a/b"), "route"),
    (lambda: Faults("s").add(Error(), toxicity=2), "toxicity"),
    (lambda: Faults("s").add(Error(), start=-1), "start"),
    (lambda: Faults("s").add(Error(), start=5, end=5), "end"),
    (lambda: Faults("s").add(Error(), start=5, end=3), "end"),
    (lambda: Faults("s").add("slow"), "toxic"),
])
def test_bad_parameters_name_the_parameter(make, param):
    with pytest.raises((ValueError, TypeError)) as e:
        make()
    assert str(e.value).startswith(param), str(e.value)


def test_normal_and_lognormal_accept_jitter_above_ms():
    assert Latency(10, 20, "normal").jitter_ms == 20
    assert Latency(10, 20, "lognormal").jitter_ms == 20
