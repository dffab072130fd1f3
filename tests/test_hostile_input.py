"""Hostile input to the core, data and resilience layers: every finding of the hostile-input
review has a test here that failed before the fix.

* a path cannot send a call to another host or port;
* NaN and infinity are refused with the parameter's name, never passed on to a timer;
* every size has an upper bound; load generators keep their bounds even when the function
  never awaits; absurd rates are refused;
* the outbox refuses an unknown topic in the transaction that would have stored it.
"""
from __future__ import annotations

import asyncio
import math

import pytest

from toylib import Service, Topology
from toylib.core import deadline as dl
from toylib.core import load
from toylib.core import validate as v
from toylib.core.clock import now

NAN, INF = float("nan"), float("inf")


def two_services():
    a, b = Service("a"), Service("b")

    @a.get("/y")
    async def ya(request):
        return {"from": "a"}

    @b.get("/y")
    async def yb(request):
        return {"from": "b"}

    @a.get("/echo/{rest:.*}")
    async def echo(request):
        return {"from": "a", "path": request.path}

    return a, b


# -- a path cannot redirect a call ------------------------------------------------------------
INJECTIONS = [
    "@127.0.0.1:{port}/y",          # the first address becomes a user name
    "@example.com/",                # ... and the host becomes example.com
    ":{port}/y",                    # another port after the service's host
    "//127.0.0.1:{port}/y",         # a network-path reference
    "http://127.0.0.1:{port}/y",    # a whole URL
    "/\\\\127.0.0.1:{port}/y",      # backslashes some parsers read as slashes
    "\\\\127.0.0.1:{port}/y",
    "/y#@127.0.0.1:{port}",         # a fragment
    "/y\r\nHost: 127.0.0.1:{port}",  # a second header line
    "y",                            # no leading slash
    "",
]


@pytest.mark.parametrize("form", INJECTIONS)
async def test_a_path_cannot_reach_another_service(form, leakcheck):
    a, b = two_services()
    async with Topology(a, b) as topo:
        path = form.format(port=b.port)
        with pytest.raises(ValueError, match="path"):
            await topo.call("a", "GET", path)
        assert b.handled == 0 and a.handled == 0
        assert len(topo.tracer) == 0      # refused before anything was sent or recorded


async def test_odd_but_harmless_paths_stay_on_the_callee(leakcheck):
    a, b = two_services()
    async with Topology(a, b) as topo:
        for path in (f"/echo/@127.0.0.1:{b.port}/y", "/echo/a@b", "/echo/x?q=1&r=@2",
                     "/echo/../echo/z"):
            answer = await topo.call("a", "GET", path)
            assert answer["from"] == "a", path
        assert b.handled == 0


def test_check_path_names_the_parameter():
    from toylib.core.services import check_path
    for bad in (None, 7, b"/y"):
        with pytest.raises(TypeError, match="path"):
            check_path(bad)
    with pytest.raises(ValueError, match="path must be at most"):
        check_path("/" + "x" * 10_000)
    assert check_path("/users/1?x=2") == "/users/1?x=2"


async def test_unknown_target_and_caller_name_the_parameter_and_the_services(leakcheck):
    a, b = two_services()
    async with Topology(a, b) as topo:
        with pytest.raises(ValueError, match=r"target must be .*'a', 'b'.*'nosuch'"):
            await topo.call("nosuch", "GET", "/y")
        with pytest.raises(KeyError):              # still a lookup error for old callers
            await topo.call("nosuch", "GET", "/y")
        with pytest.raises((ValueError, TypeError), match="target"):
            await topo.call(["a"], "GET", "/y")
        with pytest.raises(ValueError, match="caller"):
            await topo.call("a", "GET", "/y", caller="nobody")
        with pytest.raises(ValueError, match="method"):
            await topo.call("a", "FETCH", "/y")
        with pytest.raises(ValueError, match="service must be"):
            topo["nosuch"]


@pytest.mark.parametrize("kw,param", [
    ({"timeout": NAN}, "timeout"), ({"timeout": INF}, "timeout"), ({"timeout": -1}, "timeout"),
    ({"timeout": 0}, "timeout"), ({"timeout": 1e12}, "timeout"),
    ({"connect_timeout": NAN}, "connect_timeout"), ({"connect_timeout": INF}, "connect_timeout"),
    ({"json": {1, 2}}, "json"), ({"json": object()}, "json"),
    ({"params": [1]}, "params"), ({"params": {"a": None}}, "params"),
    ({"params": {"a": True}}, "params"), ({"headers": {"X-A": "1\r\nX-B: 2"}}, "headers"),
    ({"headers": "X-A: 1"}, "headers"), ({"trace_id": "t\n1"}, "trace_id"),
    ({"trace_id": ""}, "trace_id"), ({"raw": "yes"}, "raw"),
])
async def test_call_arguments_are_checked_before_sending(kw, param, leakcheck):
    a, b = two_services()
    async with Topology(a, b) as topo:
        with pytest.raises((ValueError, TypeError), match=param):
            await topo.call("a", "GET", "/y", **kw)
        assert a.handled == 0


# -- numbers: NaN and infinity never reach a timer ----------------------------------------------
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nan_and_infinity_are_refused_with_the_name(bad):
    for check in (v.positive, v.non_negative, v.probability, v.seconds):
        with pytest.raises((ValueError, TypeError), match="timeout"):
            check("timeout", bad)
    with pytest.raises((ValueError, TypeError), match="n must be"):
        v.number("n", bad, low=1, integer=True)


def test_huge_integers_get_a_clear_error_not_an_overflow():
    with pytest.raises(ValueError, match="n must be an integer in"):
        v.number("n", 10 ** 400, low=1, high=10, integer=True)
    with pytest.raises(ValueError, match="about 400 digits"):
        v.number("n", 10 ** 400, low=1, high=10)
    assert v.number("n", 10 ** 400, low=1, integer=True) == 10 ** 400


def test_an_unbounded_number_may_be_infinite_a_bounded_one_may_not():
    assert v.number("ratio", INF) == INF               # a measured ratio with nothing after
    with pytest.raises(ValueError, match="finite"):
        v.number("ratio", INF, finite=True)
    with pytest.raises(ValueError, match="finite"):
        v.number("x", INF, low=0)


def test_deadline_refuses_nan_and_infinity():
    for bad in (NAN, INF, -1, 0, 1e12):
        with pytest.raises((ValueError, TypeError), match="seconds"):
            dl.Deadline.after(bad)
    for bad in (NAN, INF, "soon"):
        with pytest.raises((ValueError, TypeError), match="at"):
            dl.Deadline(bad)
    for header in ("nan", "inf", "-1", "1e30"):
        with pytest.raises(ValueError, match=dl.HEADER):
            dl.Deadline.from_header(header)


async def test_a_deadline_header_of_nan_or_inf_is_a_400_not_a_hang(leakcheck):
    a, b = two_services()
    async with Topology(a, b) as topo:
        for bad in ("nan", "inf", "1e300"):
            reply = await topo.call("a", "GET", "/y", headers={dl.HEADER: bad}, raw=True,
                                    timeout=5)
            assert reply.status == 400, (bad, reply)


# -- load generators keep their bounds ------------------------------------------------------------
async def never_awaits(i):
    return None


async def yields(i):
    # For the argument checks below: were a bound not checked, this still lets max_seconds
    # end the run, so a regression fails the test instead of filling the machine's memory.
    await asyncio.sleep(0)


async def test_closed_loop_stops_at_max_seconds_when_fn_never_awaits(leakcheck):
    t0 = now()
    res = await load.closed_loop(never_awaits, n=1_000_000, concurrency=2, max_seconds=0.05)
    elapsed = now() - t0
    # The bound is kept to within one request and the DataFrame's construction, which on a
    # busy machine took 0.88 s for what 0.05 s had done (a run to n takes several seconds).
    assert len(res.df) < 1_000_000
    assert elapsed < 0.05 + 2.0, elapsed


async def test_open_loop_stops_at_max_seconds_when_fn_never_awaits(leakcheck):
    t0 = now()
    res = await load.open_loop(never_awaits, rate=100_000, n=1_000_000, max_seconds=0.05)
    assert now() - t0 < 0.05 + 1.0
    assert len(res.df) < 1_000_000


@pytest.mark.parametrize("gen,kw", [
    ("open_loop", {"rate": 1e300}), ("open_loop", {"rate": INF}), ("open_loop", {"rate": NAN}),
    ("open_loop", {"rate": 1e6}), ("open_loop", {"rate": 10, "seed": NAN}),
    ("closed_loop", {"concurrency": 10 ** 12}), ("closed_loop", {"concurrency": INF}),
])
async def test_absurd_rates_and_sizes_are_refused_at_once(gen, kw):
    param = next(iter(kw)) if len(kw) == 1 else "seed"
    t0 = now()
    with pytest.raises((ValueError, TypeError), match=param):
        await getattr(load, gen)(yields, n=10, max_seconds=0.05, **kw)
    assert now() - t0 < 0.5


@pytest.mark.parametrize("gen,kw", [("sequential", {}), ("closed_loop", {"concurrency": 2}),
                                    ("open_loop", {"rate": 100})])
@pytest.mark.parametrize("bad", [{"n": 10 ** 12}, {"n": 0}, {"n": NAN}, {"n": 2.5},
                                 {"max_seconds": NAN}, {"max_seconds": INF},
                                 {"max_seconds": 10 ** 9}, {"max_seconds": 0}])
async def test_every_generator_bounds_n_and_max_seconds(gen, kw, bad):
    args = {"n": 10, "max_seconds": 0.05, **kw, **bad}
    with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
        await asyncio.wait_for(getattr(load, gen)(yields, **args), 5)


def plain(i):
    return {"i": i}


@pytest.mark.parametrize("gen,kw", [("sequential", {}), ("closed_loop", {"concurrency": 2}),
                                    ("open_loop", {"rate": 100})])
async def test_a_plain_function_is_refused_not_recorded(gen, kw, leakcheck):
    with pytest.raises(TypeError, match="fn must be an async function"):
        await getattr(load, gen)(plain, n=3, max_seconds=1, **kw)


async def test_lambdas_returning_coroutines_still_work(leakcheck):
    res = await load.sequential(lambda i: never_awaits(i), n=3, max_seconds=1)
    assert list(res.df["ok"]) == [True, True, True]


# -- sizes have an upper bound ------------------------------------------------------------------
def test_bus_sizes_have_upper_bounds():
    from toylib.data.bus import EventBus, partition_for

    async def handler(event):
        return None

    bus = EventBus()
    t0 = now()
    # 10**5 and 10**6 (not 10**9): were the bound missing, the test fails without first
    # filling the machine's memory with empty partition logs
    for bad in (10 ** 5, 10 ** 6, INF, NAN, 0):
        with pytest.raises((ValueError, TypeError), match="partitions"):
            bus.create_topic("t", partitions=bad)
    bus.create_topic("t", partitions=4)
    for bad in (10 ** 12, 10 ** 6, INF, -1):
        with pytest.raises((ValueError, TypeError), match="consumers"):
            bus.consumer_group("t", "g", handler, consumers=bad)
    for bad in (NAN, INF, -1, 10 ** 9):
        with pytest.raises((ValueError, TypeError), match="retry_delay"):
            bus.consumer_group("t", "g", handler, retry_delay=bad)
    with pytest.raises((ValueError, TypeError), match="batch_size"):
        bus.consumer_group("t", "g", handler, batch_size=10 ** 12)
    with pytest.raises((ValueError, TypeError), match="partitions"):
        partition_for("k", 10 ** 12)
    assert now() - t0 < 1.0          # refused at once, no memory filled first


async def test_bus_timeouts_refuse_nan_and_infinity(leakcheck):
    from toylib.data.bus import EventBus

    async def handler(event):
        return None

    bus = EventBus()
    bus.create_topic("t")
    async with bus.consumer_group("t", "g", handler) as g:
        for bad in (NAN, INF, -1):
            with pytest.raises((ValueError, TypeError), match="timeout"):
                await g.wait_caught_up(timeout=bad)
    for bad in (NAN, INF, 0):
        with pytest.raises((ValueError, TypeError), match="interval"):
            async with bus.lag_monitor(interval=bad):
                pass


async def test_database_busy_timeout_must_be_finite(tmp_path):
    from toylib.data.db import Database, Workspace
    for bad in (INF, NAN, -1, 10 ** 9):
        with pytest.raises((ValueError, TypeError), match="busy_timeout"):
            Database(tmp_path / "x.sqlite", busy_timeout=bad)
        with pytest.raises((ValueError, TypeError), match="busy_timeout"):
            Workspace(busy_timeout=bad)


def test_resilience_parameters_refuse_nan_infinity_and_huge_sizes():
    from toylib.resilience.breaker import CircuitBreaker
    from toylib.resilience.bulkhead import Bulkhead
    from toylib.resilience.cache import TTLCache
    from toylib.resilience.health import HealthChecker
    from toylib.resilience.ratelimit import RateLimiter
    from toylib.resilience.retry import RetryBudget, backoff_delays

    async def probe():
        return True

    cases = [
        (lambda x: CircuitBreaker("b", wait_in_open=x), "wait_in_open", (NAN, INF)),
        (lambda x: CircuitBreaker("b", window_size=x), "window_size", (NAN, INF, 10 ** 12)),
        (lambda x: CircuitBreaker("b", slow_call_duration=x), "slow_call_duration", (NAN, INF)),
        (lambda x: CircuitBreaker.consecutive("b", reset_timeout=x), "reset_timeout",
         (NAN, INF)),
        (lambda x: Bulkhead("b", max_concurrent=x), "max_concurrent", (NAN, 10 ** 12)),
        (lambda x: TTLCache(x), "ttl", (NAN, INF, -1)),
        (lambda x: TTLCache(1, max_entries=x), "max_entries", (10 ** 12, INF)),
        (lambda x: HealthChecker({"a": probe}, interval=x), "interval", (NAN, INF, 0)),
        (lambda x: HealthChecker({"a": probe}, timeout=x), "timeout", (NAN, INF)),
        (lambda x: RateLimiter(x), "rate", (NAN, INF, 1e300)),
        (lambda x: RetryBudget(0.1, burst=x), "burst", (NAN, INF, 1e300)),
        (lambda x: backoff_delays("none", x, 1, 3), "base", (NAN, INF, -1)),
        (lambda x: backoff_delays("none", 0.1, x, 3), "cap", (NAN, INF)),
        (lambda x: backoff_delays("none", 0.1, 1, x), "attempts", (10 ** 12, NAN)),
    ]
    for make, param, bads in cases:
        for bad in bads:
            with pytest.raises((ValueError, TypeError), match=param):
                make(bad)


def test_a_pair_names_the_field_that_is_wrong():
    from toylib.resilience.retry import backoff_delays
    with pytest.raises(ValueError, match="^base must"):
        backoff_delays("none", -1, 0.5, 3)            # base is wrong, not cap
    with pytest.raises(ValueError, match="^cap must .*base \\(0.5\\)"):
        backoff_delays("none", 0.5, 0.1, 3)
    from toylib.core.faults import Faults, Hang
    with pytest.raises((ValueError, TypeError), match="^start must"):
        Faults("s").add(Hang(), start=NAN, end=1)     # start is wrong, not end


# -- the outbox refuses an unknown topic in the writer's transaction ---------------------------
async def test_outbox_refuses_an_unknown_topic_and_stores_nothing(tmp_path, leakcheck):
    from toylib.data.bus import EventBus
    from toylib.data.db import Workspace
    from toylib.data.outbox import Outbox

    bus = EventBus()
    bus.create_topic("orders")
    async with Workspace() as ws:
        db = await ws.database("orders")
        await db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        outbox = await Outbox(db).setup()
        async with outbox.relay(bus, interval=0.005) as relay:
            with pytest.raises(ValueError, match=r"topic must be .*'orders'.*'ordres'"):
                await outbox.write("INSERT INTO orders (id) VALUES (?)", (1,), topic="ordres",
                                   key="o1", value={"id": 1})
            # nothing stored: neither the business row nor an outbox row
            assert await db.fetchall("SELECT * FROM orders") == []
            assert await outbox.pending() == 0
            # and the relay keeps going for the events after it
            await outbox.write("INSERT INTO orders (id) VALUES (?)", (2,), topic="orders",
                               key="o2", value={"id": 2})
            await relay.wait_drained(timeout=5)
        assert [e.key for e in bus.events("orders")] == ["o2"]


async def test_outbox_given_its_bus_checks_topics_before_any_relay(leakcheck):
    from toylib.data.bus import EventBus
    from toylib.data.db import Workspace
    from toylib.data.outbox import Outbox

    bus = EventBus()
    bus.create_topic("orders")
    async with Workspace() as ws:
        db = await ws.database("orders")
        outbox = await Outbox(db, bus=bus).setup()
        with pytest.raises(ValueError, match="topic"):
            async with db.transaction():
                await outbox.emit("nosuch", "k", {})
        assert await outbox.pending() == 0
